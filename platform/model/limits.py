"""What a base model bounds, read from its config and tokenizer files alone (no weights), and the templates
and virtual-token counts checked against it before training or a search starts, each problem naming the
key, the count and the limit.

An example of a task holds its virtual tokens, its template's own text (tokenized with the model's
tokenizer) and BOS/EOS when the config adds them, whatever its fields; so every count of a new task (and
every search candidate) must leave room for that within min(model positions, max_seq_length). Restored
tasks, and templates of a model folder without tokenizer files, are checked with MIN_TEXT_TOKENS of room.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from promptray.platform.config.checks import MIN_TEXT_TOKENS
from promptray.platform.errors import ConfigError

if TYPE_CHECKING:
    from promptray.platform.config.schema import PromptLearningConfig
    from promptray.platform.data.templates import TaskTemplate
    from promptray.platform.table.table import TaskPrompt

log = logging.getLogger(__name__)
DEFAULT_POSITIONS = 2048  # a config that names no position limit (rotary models without max_position_embeddings)


def max_positions_of(config: Any) -> int:
    """The longest sequence a Hugging Face model config allows (its position table), else DEFAULT_POSITIONS."""
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, key, None)
        if value:
            return int(value)
    return DEFAULT_POSITIONS


def _first(config: Any, keys: tuple[str, ...]) -> Optional[int]:
    return next((int(getattr(config, k)) for k in keys if getattr(config, k, None)), None)


@dataclass(frozen=True)
class ModelLimits:
    """A base model's limits from its config.json (no weights): positions, and H and V when it says."""

    name: str  # as the config names the base model
    max_positions: int
    hidden_size: Optional[int] = None  # width of the input embeddings (= of every prompt)
    vocab_size: Optional[int] = None


def read_model_limits(name_or_path: str) -> ModelLimits:
    """The limits of a base model (built-in name, local folder or hub id) from its config.json only."""
    from transformers import AutoConfig

    from promptray.platform.model.hub import resolve_model_path

    source = resolve_model_path(name_or_path)
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"model.language_model_path: cannot read the config of {name_or_path!r} ({first}); "
                          "pass a Hugging Face model folder or id, or the built-in smollm2-135m",
                          title="cannot load base model") from None
    return ModelLimits(str(name_or_path), max_positions_of(config),
                       _first(config, ("hidden_size", "n_embd", "d_model")), _first(config, ("vocab_size",)))


def count_problems(key: str, counts: Iterable[int], limits: ModelLimits) -> list[str]:
    """`key`'s virtual-token counts that leave no room for text in the model's positions."""
    room = limits.max_positions - MIN_TEXT_TOKENS
    too_many = sorted({c for c in counts if c > room})
    if not too_many:
        return []
    shown = too_many[0] if len(too_many) == 1 else too_many
    return [f"{key}: {shown} virtual tokens do not fit the base model {limits.name!r}, which takes "
            f"{limits.max_positions} positions (max_position_embeddings); an example needs its virtual tokens "
            f"plus at least {MIN_TEXT_TOKENS} text tokens, so use at most {room}"]


def length_limit(cfg: PromptLearningConfig, limits: ModelLimits) -> tuple[int, str]:
    """(the tokens an example may have, the setting that says so with its value): min(model positions,
    max_seq_length)."""
    if limits.max_positions < cfg.max_seq_length:
        return limits.max_positions, (f"the {limits.max_positions} positions of base model {limits.name!r} "
                                      "(max_position_embeddings)")
    key = "model.data.max_seq_length" if cfg.model.data.max_seq_length else "model.encoder_seq_length"
    return cfg.max_seq_length, f"{key}={cfg.max_seq_length}"


def template_text_tokens(template: TaskTemplate, cfg: PromptLearningConfig, tokenizer) -> tuple[int, str]:
    """(tokens an example of `template` holds besides its virtual tokens with every field empty, what they
    are): the template's own text tokenized with the model's tokenizer, plus BOS/EOS as the config adds
    them; MIN_TEXT_TOKENS when there is no tokenizer to count with."""
    from promptray.platform.data.dataset import shortest_example

    d = cfg.model.data
    if tokenizer is None:
        return MIN_TEXT_TOKENS, f"at least {MIN_TEXT_TOKENS} text tokens (no tokenizer files to count the template's)"
    n = shortest_example(template, tokenizer, add_bos=d.add_bos, add_eos=d.add_eos,
                         inference=False) - template.total_virtual_tokens
    bos, eos = int(d.add_bos and tokenizer.bos_token_id is not None), int(d.add_eos)
    extra = " + BOS (model.data.add_bos)" * bos + " + EOS (model.data.add_eos)" * eos
    return n, (f"{n - bos - eos} tokens of the template's text ({template.prompt_template!r} with every field "
               f"empty){extra}")


def template_limit_problems(cfg: PromptLearningConfig, limits: ModelLimits, tokenizer=None) -> list[str]:
    """Each new task's virtual tokens (model.task_templates[i], or each of its search candidates) plus its
    template's own text and BOS/EOS (`template_text_tokens`), against min(model positions, max_seq_length):
    what an example of the task needs with every field empty."""
    from promptray.platform.data.templates import TaskTemplate

    limit, key = length_limit(cfg, limits)
    fixed, problems = cfg.fixed_count_tasks(), []
    searched = cfg.candidate_counts()
    for i, raw in enumerate(cfg.model.task_templates):
        name = raw.get("taskname")
        if name not in fixed and name not in searched:
            continue
        template = TaskTemplate.model_validate(raw)
        text, what = template_text_tokens(template, cfg, tokenizer)
        where, counts = ((f"model.task_templates[{i}].total_virtual_tokens (task {name!r})",
                          [template.total_virtual_tokens]) if name in fixed else searched[name])
        problems += _generation_problems(cfg, template, counts, limits, tokenizer, where)
        over = sorted({c for c in counts if c + text > limit})
        if over:
            problems.append(f"{where}: {over[0] if len(over) == 1 else over} virtual tokens + {what} need "
                            f"{max(over) + text} positions, more than {key}; use at most {limit - text} virtual "
                            f"tokens{_raise_hint(key)}")
    return problems


def _generation_problems(cfg: PromptLearningConfig, template: TaskTemplate, counts: list[int],
                         limits: ModelLimits, tokenizer, where: str) -> list[str]:
    """A val_accuracy search generates search.max_new_tokens tokens after each validation prompt: the
    counts whose shortest prompt (virtual tokens + template text up to the answer) leaves it no room."""
    from promptray.platform.data.dataset import shortest_example

    budget = cfg.generation_budget()
    if budget is None or tokenizer is None:
        return []
    key, generate = budget
    text = shortest_example(template, tokenizer, add_bos=cfg.model.data.add_bos, add_eos=False,
                            inference=True) - template.total_virtual_tokens
    over = sorted({c for c in counts if c + text + generate > limits.max_positions})
    if not over:
        return []
    return [f"{where}: {over[0] if len(over) == 1 else over} virtual tokens + {text} tokens of the template's text "
            f"up to the answer + {key} {generate} exceed the {limits.max_positions} positions "
            f"of base model {limits.name!r}; use at most {limits.max_positions - text - generate} virtual tokens "
            f"or lower {key}"]


def _raise_hint(key: str) -> str:
    return f" (or raise {key.split('=')[0]})" if key.startswith("model.") else ""


def existing_task_problems(existing: dict[str, TaskPrompt], limits: ModelLimits) -> list[str]:
    """Restored (frozen) tasks against the model: their width and vocabulary (from the table's fingerprint)
    and their virtual-token counts. The full fingerprint is compared once the weights are loaded."""
    problems = []
    for name, p in existing.items():
        trained = p.base_model
        for what, theirs, ours in (("hidden size", trained.hidden_size, limits.hidden_size),
                                   ("vocabulary size", trained.vocab_size, limits.vocab_size)):
            if ours is not None and theirs != ours:
                problems.append(f"model.existing_tasks: task {name!r} was trained on base model {trained.name!r} "
                                f"with {what} {theirs}, but {limits.name!r} has {what} {ours}; set "
                                f"model.language_model_path to the model it was trained on")
        problems += count_problems(f"model.existing_tasks: task {name!r} total_virtual_tokens",
                                   [p.num_virtual_tokens], limits)
    return problems


def model_limit_problems(cfg: PromptLearningConfig, model_name: Optional[str] = None,
                         existing: Optional[dict[str, TaskPrompt]] = None) -> list[str]:
    """New tasks' templates, restored tasks and search candidates of `cfg` against its base model
    (model_name, default model.language_model_path); [] when no model is named."""
    name = model_name or cfg.model.language_model_path
    if not name:
        return []
    limits = read_model_limits(name)
    return (template_limit_problems(cfg, limits, _tokenizer_or_none(name))
            + existing_task_problems(existing or {}, limits))


def _tokenizer_or_none(name: str):
    """The model's tokenizer (its files only), or None when it has none to load (a config-only folder)."""
    from promptray.platform.model.hub import load_tokenizer

    try:
        return load_tokenizer(name)
    except ConfigError as e:
        log.info("template text not counted with the tokenizer: %s", e)
        return None


def check_model_limits_on_driver(cfg: PromptLearningConfig) -> None:
    """check_model_limits in a Ray job's driver, before any worker or trial starts; skipped (the workers
    check it before loading the model) when model.language_model_path is a folder this machine lacks, as on
    a cluster whose model lives on the worker nodes only."""
    from pathlib import Path

    from promptray.platform.model.hub import BUILTIN_MODELS, looks_like_local_path

    name = cfg.model.language_model_path
    local = bool(name) and name not in BUILTIN_MODELS and looks_like_local_path(name)
    if local and not Path(name).expanduser().exists():
        log.info("base model %s is not on this machine: its limits are checked by the workers", name)
        return
    check_model_limits(cfg)


def check_model_limits(cfg: PromptLearningConfig, model_name: Optional[str] = None,
                       existing: Optional[dict[str, TaskPrompt]] = None) -> None:
    """Raise ConfigError listing every count or restored prompt that does not fit the base model."""
    problems = model_limit_problems(cfg, model_name, existing)
    if problems:
        raise ConfigError(problems)

"""What a base model bounds, read from its config alone (no weights), and the virtual-token counts checked
against it before training or a search starts, each problem naming the key, the count and the limit.

An example holds its virtual tokens and at least a few text tokens (the template's words, the answer, EOS),
so a count fits when count + MIN_TEXT_TOKENS <= the model's positions (and <= max_seq_length, which the
config check covers without the model).
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


def template_limit_problems(cfg: PromptLearningConfig, limits: ModelLimits) -> list[str]:
    """Each new task's total_virtual_tokens against the model (model.task_templates[i] names it); a task a
    search tunes is checked by its candidates instead."""
    problems = []
    for i, t in enumerate(cfg.model.task_templates):
        if t.get("taskname") in cfg.fixed_count_tasks() and isinstance(t.get("total_virtual_tokens"), int):
            problems += count_problems(f"model.task_templates[{i}].total_virtual_tokens (task "
                                       f"{t['taskname']!r})", [t["total_virtual_tokens"]], limits)
    return problems


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


def candidate_limit_problems(cfg: PromptLearningConfig, limits: ModelLimits) -> list[str]:
    """Every candidate count of a job config (cfg.candidate_counts, e.g. a search's) against the model."""
    return [p for where, counts in cfg.candidate_counts().items() for p in count_problems(where, counts, limits)]


def model_limit_problems(cfg: PromptLearningConfig, model_name: Optional[str] = None,
                         existing: Optional[dict[str, TaskPrompt]] = None) -> list[str]:
    """New tasks' templates, restored tasks and search candidates of `cfg` against its base model
    (model_name, default model.language_model_path); [] when no model is named."""
    name = model_name or cfg.model.language_model_path
    if not name:
        return []
    limits = read_model_limits(name)
    return (template_limit_problems(cfg, limits) + existing_task_problems(existing or {}, limits)
            + candidate_limit_problems(cfg, limits))


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

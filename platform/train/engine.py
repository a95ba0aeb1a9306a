"""From a checked config to a ready `PromptLearningModel`: base model, restored tasks, new prompts.

This is where continual learning is enforced: existing tasks come from the restored prompt table as
frozen buffers (bit-identical afterwards), new tasks get fresh parameters, and every mismatch between
the config and the table is reported at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

import torch

from promptray.platform.config.schema import PromptLearningConfig
from promptray.platform.data.encoding import TaskEncoding, fingerprint_tokenizer
from promptray.platform.data.templates import TaskTemplate, validate_task_templates
from promptray.platform.errors import ConfigError
from promptray.platform.generation.loading import PromptModel, check_prompts, read_prompts, trained_base_model
from promptray.platform.model.fingerprint import BaseModelFingerprint, fingerprint_model
from promptray.platform.model.hub import load_base_model
from promptray.platform.model.limits import check_model_limits
from promptray.platform.model.prompt_encoder import (
    PromptBank,
    PromptEncoder,
    init_from_text,
    init_from_vocab,
    init_random,
)
from promptray.platform.model.prompt_model import PromptLearningModel
from promptray.platform.table.table import PromptTable, TaskPrompt

log = logging.getLogger(__name__)


@dataclass
class Engine:
    """What a training run trains: built from a checked config by `build_engine`, before anything trains.

    - `model`: the `PromptLearningModel` (base model from the hub, frozen unless model.lm_finetune, in the
      config's precision, on the CPU until the trainer moves it) whose `bank` holds the existing tasks frozen
      and fresh parameters for the new ones.
    - `tokenizer`: the base model's Hugging Face tokenizer; `fingerprint`: the base model's identity, recorded
      with every published prompt.
    - `templates`: taskname -> `TaskTemplate` of every task the model knows (the table's for existing tasks).
    - `new_tasks`: the tasks this run trains (model.new_tasks); `existing`: taskname -> restored `TaskPrompt`.

    `build_engine` raises ConfigError (new tasks already in the table, existing tasks missing from it, a config
    template that differs from the stored one, no base model to take) and BaseModelMismatchError /
    TokenizerMismatchError (restored prompts trained on another base model or tokenizer).
    """

    model: PromptLearningModel
    tokenizer: object
    fingerprint: BaseModelFingerprint
    templates: dict[str, TaskTemplate]  # every task the model knows (existing + new)
    new_tasks: list[str]
    existing: dict[str, TaskPrompt] = field(default_factory=dict)  # restored, frozen

    def new_tasks_model(self, encoding: TaskEncoding) -> PromptModel:
        """The new tasks as a `PromptModel` sharing this model (not copied), each formatted with `encoding`
        (how this run trains them): what search trials evaluate between training steps."""
        return PromptModel(self.model, self.tokenizer, {n: self.templates[n] for n in self.new_tasks},
                           {n: None for n in self.new_tasks}, self.fingerprint,
                           {n: encoding for n in self.new_tasks})


def restore_tasks(table: PromptTable, names: list[str]) -> dict[str, TaskPrompt]:
    """Existing tasks from a table, not yet checked (`loading.check_prompts` does, once the model is loaded)."""
    known, uri = table.tasks(), table.uri
    missing = [n for n in names if n not in known]
    if missing:
        raise ConfigError(f"model.existing_tasks: {missing} not in the prompt table at {uri!r} "
                          f"(it has {known}); fix existing_tasks or restore_path")
    return table.get_many(names)


def _check_new_tasks(cfg: PromptLearningConfig, table: Optional[PromptTable]) -> None:
    if table is None or not table.exists():
        return
    clash = [n for n in cfg.model.new_tasks if n in table.tasks()]
    if clash:
        raise ConfigError(f"model.new_tasks: {clash} already in the prompt table at {table.uri!r}; "
                          "existing tasks are never retrained: list them in existing_tasks, or use a new taskname")


def _merge_templates(cfg: PromptLearningConfig, existing: dict[str, TaskPrompt]) -> dict[str, TaskTemplate]:
    """Config templates plus the table's templates of existing tasks (the table's are authoritative)."""
    given = {t.taskname: t for t in validate_task_templates(cfg.model.task_templates)}
    problems = []
    for name, prompt in existing.items():
        stored = TaskTemplate.model_validate(prompt.template)
        if name in given and given[name] != stored:
            problems.append(f"model.task_templates: template of existing task {name!r} differs from the one "
                            f"stored with its prompt ({stored.prompt_template!r}, {stored.total_virtual_tokens} "
                            "tokens); remove it from the config or make it equal")
        given[name] = stored
    if problems:
        raise ConfigError(problems)
    return given


def _prompt_tuning_init(cfg: PromptLearningConfig, name: str, i: int, n: int, tokenizer,
                        vocab: torch.nn.Module, gen: torch.Generator) -> torch.Tensor:
    pt = cfg.model.prompt_tuning
    method = pt.new_prompt_init_methods[i] if i < len(pt.new_prompt_init_methods) else "random"
    if method == "text":
        return init_from_text(pt.new_prompt_init_text[i], n, tokenizer, vocab)
    return init_from_vocab(n, vocab, gen) if method == "vocab" else init_random(n, vocab, gen)


def build_bank(cfg: PromptLearningConfig, templates: dict[str, TaskTemplate], existing: dict[str, TaskPrompt],
               tokenizer, vocab: torch.nn.Module) -> PromptBank:
    """Frozen existing tasks + fresh parameters for the new ones (prompt tuning or a shared p-tuning encoder)."""
    hidden = vocab.weight.shape[1]
    bank = PromptBank(hidden)
    for name, prompt in existing.items():
        bank.add_frozen(name, prompt.embeddings)
    gen = torch.Generator().manual_seed(cfg.model.seed)
    counts = {n: templates[n].total_virtual_tokens for n in cfg.model.new_tasks}
    if cfg.model.virtual_prompt_style == "p-tuning":
        p = cfg.model.p_tuning
        torch.manual_seed(cfg.model.seed)
        bank.set_encoder(PromptEncoder(counts, hidden, p.encoder_type, p.encoder_hidden, p.num_layers, p.dropout))
    else:
        for i, (name, n) in enumerate(counts.items()):
            bank.add_tuned(name, _prompt_tuning_init(cfg, name, i, n, tokenizer, vocab, gen))
    return bank


def build_engine(cfg: PromptLearningConfig) -> Engine:
    """Load the base model, restore existing tasks, create new prompts; nothing trains yet."""
    m = cfg.model
    # one client, reused below
    restored = PromptTable(m.restore_path, endpoint_url=cfg.storage.endpoint_url) if m.restore_path else None
    _check_new_tasks(cfg, restored)
    existing = restore_tasks(restored, m.existing_tasks) if m.existing_tasks else {}
    lm_name = m.language_model_path or _base_model_from_table(restored, existing)
    check_model_limits(cfg, lm_name, existing)  # from the model's config alone, before its weights load
    lm, tokenizer = load_base_model(lm_name)
    fingerprint = fingerprint_model(lm, lm_name)
    check_prompts(existing, fingerprint, fingerprint_tokenizer(tokenizer))  # as every loader checks them
    templates = _merge_templates(cfg, existing)
    vocab = lm.get_input_embeddings()  # rows as the model sees them (float32 as loaded)
    bank = build_bank(cfg, templates, existing, tokenizer, vocab)
    model = PromptLearningModel(lm, bank, cfg.precision, m.lm_finetune)
    log.info("base model %s (%s, hidden %d); trainable parameters: %d", lm_name, fingerprint.architecture,
             fingerprint.hidden_size, model.num_parameters())
    return Engine(model, tokenizer, fingerprint, templates, list(m.new_tasks), existing)


def _base_model_from_table(table: Optional[PromptTable], existing: dict[str, TaskPrompt]) -> str:
    """The base model a restored table was trained on (used when language_model_path is not given): that of
    the existing tasks, else of all the table's tasks (loading.trained_base_model's errors)."""
    if table is None:
        raise ConfigError("model.language_model_path is not set and there is no restore_path with tasks to take "
                          "the base model from; set language_model_path")
    return trained_base_model(existing or read_prompts(table, table.tasks()), table.uri, "model.language_model_path")

"""One way to load soft prompts onto their base model: `load_prompt_model`, used by `promptray infer`, the
serving replica, search-trial evaluation and (its pieces) training restore.

The steps, each done once: resolve the base model (the one given, else the one the tasks were trained on),
load it (`model/hub.py`), fingerprint model and tokenizer, check every prompt against both
(`TaskPrompt.check_against`: BaseModelMismatchError, or its subclass TokenizerMismatchError, naming
`task 'x' version 'v…'`), and put the prompts, frozen, into a `PromptLearningModel` on the device.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Optional

import torch

from promptray.platform.data.encoding import TaskEncoding, TokenizerFingerprint, fingerprint_tokenizer
from promptray.platform.data.templates import TaskTemplate
from promptray.platform.errors import BaseModelMismatchError, ConfigError
from promptray.platform.model.fingerprint import BaseModelFingerprint, fingerprint_model
from promptray.platform.model.hub import load_base_model
from promptray.platform.model.prompt_encoder import PromptBank
from promptray.platform.model.prompt_model import PromptLearningModel
from promptray.platform.table.table import PromptTable, TaskPrompt


@dataclass
class PromptModel:
    """A base model with frozen task prompts, ready to generate or score.

    `model` holds the prompts in its bank under their task names (`templates`' keys); `versions` and
    `encodings` are per task as read from the table (absent: not from a table, the defaults);
    `fingerprint` / `tokenizer_fingerprint` identify the loaded base model and tokenizer. Made by
    `load_prompt_model` (its errors are listed there), or by `Engine.new_tasks_model` for search trials."""

    model: PromptLearningModel
    tokenizer: object
    templates: dict[str, TaskTemplate]
    versions: dict[str, Optional[str]]
    fingerprint: BaseModelFingerprint
    encodings: dict[str, TaskEncoding] = field(default_factory=dict)  # as trained; absent: the defaults
    tokenizer_fingerprint: Optional[TokenizerFingerprint] = None

    def decode(self, ids: list[int]) -> str:
        """The text of token ids, special tokens (EOS, padding) left out."""
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def trained_base_model(prompts: Mapping[str, TaskPrompt], table_uri: str, setting: str) -> str:
    """The base model `prompts` were trained on, for a `setting` (e.g. "base_model", "--model") left unset.
    ConfigError when there are no prompts; BaseModelMismatchError when they were trained on different base
    models (compared by fingerprint: the same model under two names is one)."""
    if not prompts:
        raise ConfigError(f"{setting} is not set and the prompt table at {table_uri!r} has no tasks to take the base "
                          f"model from; set {setting}")
    groups: list[tuple[BaseModelFingerprint, list[str]]] = []
    for name, prompt in prompts.items():
        same = next((names for fp, names in groups if not fp.mismatches(prompt.base_model)), None)
        if same is None:
            groups.append((prompt.base_model, [name]))
        else:
            same.append(name)
    if len(groups) > 1:
        found = "; ".join(f"{fp.name!r} ({', '.join(repr(n) for n in names)})" for fp, names in groups)
        raise BaseModelMismatchError(
            f"{setting} is not set and the tasks of the prompt table at {table_uri!r} were trained on "
            f"{len(groups)} different base models: {found}; set {setting} to the one to load (tasks of the others "
            "cannot be used with it)")
    return groups[0][0].name


def check_prompts(prompts: Mapping[str, TaskPrompt], fingerprint: BaseModelFingerprint,
                  tokenizer: Optional[TokenizerFingerprint]) -> None:
    """Every prompt checked against the loaded base model and tokenizer (see `TaskPrompt.check_against`)."""
    for prompt in prompts.values():
        prompt.check_against(fingerprint, tokenizer)


def frozen_prompt_model(lm: torch.nn.Module, prompts: Mapping[str, TaskPrompt], precision: str = "fp32",
                        device: Optional[torch.device] = None, bank: type[PromptBank] = PromptBank
                        ) -> PromptLearningModel:
    """`lm` in eval mode with `prompts` frozen in a new `bank` (a PromptBank subclass: serving's can add and drop
    prompts later), moved to `device` (None: where it is)."""
    prompt_bank = bank(lm.get_input_embeddings().weight.shape[1])
    for name, prompt in prompts.items():
        prompt_bank.add_frozen(name, prompt.embeddings)  # (n, H)
    model = PromptLearningModel(lm, prompt_bank, precision).eval()
    if device is not None:
        model.to(device)  # the prompts (the bank's buffers) move with it; prompts added later are put there
    return model


def read_prompts(table: PromptTable, names: Sequence[str]) -> dict[str, TaskPrompt]:
    """The current prompts of `names`, unchecked (no read at all for none: the table may not exist yet)."""
    return table.get_many(names) if names else {}


def load_prompt_model(table: PromptTable | str, base_model: Optional[str] = None,
                      tasks: Optional[Sequence[str]] = None, precision: str = "fp32",
                      device: Optional[torch.device] = None, *, bank: type[PromptBank] = PromptBank,
                      setting: str = "base_model") -> PromptModel:
    """The base model with the prompts of `tasks` (None: every current task of the table; []: none, as a
    serving replica starts) from `table`, frozen, on `device` (None: the CPU) in `precision` ("fp32"/"bf16").

    `base_model` None: the one the tasks were trained on (with `tasks` [], the table's tasks); `setting` names
    the user's setting for it in messages. Errors: ConfigError (no task to take the base model from, an empty
    table for `tasks` None), PromptTableError (unknown task), BaseModelMismatchError (tasks of different base
    models with `base_model` unset, or a task trained on another model), TokenizerMismatchError (a subclass:
    trained with another tokenizer)."""
    table = table if isinstance(table, PromptTable) else PromptTable(table)
    names = list(table.tasks() if tasks is None else tasks)
    if tasks is None and not names:
        raise ConfigError(f"the prompt table at {table.uri!r} has no tasks; train some first")
    prompts = read_prompts(table, names)  # read once, checked below against the model they are loaded on
    if base_model is None:
        base_model = trained_base_model(prompts or read_prompts(table, table.tasks()), table.uri, setting)
    lm, tokenizer = load_base_model(base_model)
    fingerprint, tokenizer_fp = fingerprint_model(lm, base_model), fingerprint_tokenizer(tokenizer)
    check_prompts(prompts, fingerprint, tokenizer_fp)
    model = frozen_prompt_model(lm, prompts, precision, device, bank)
    return PromptModel(model, tokenizer, {n: TaskTemplate.model_validate(p.template) for n, p in prompts.items()},
                       {n: p.version for n, p in prompts.items()}, fingerprint,
                       {n: p.encoding for n, p in prompts.items()}, tokenizer_fp)


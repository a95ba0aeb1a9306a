"""A soft prompt in memory (`TaskPrompt`), its checks before publishing, and its bytes in a prompt table:
safetensors with the tensor "embeddings" and JSON metadata under "promptray" (no pickle).

The metadata's "encoding" key (add_bos, add_eos, tokenizer fingerprint; see `encoding.py`) was added
after the first objects were written: readers that predate it ignore it, and objects without it read as
the defaults they were trained with."""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from promptray.platform.data.encoding import TaskEncoding, TokenizerFingerprint
from promptray.platform.errors import ConfigError, PromptTableError
from promptray.platform.model.fingerprint import BaseModelFingerprint

OBJECT_FORMAT = "promptray-prompt/1"
STYLES = ("prompt-tuning", "p-tuning", "imported")
TASKNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
META_FIELDS = ("taskname", "template", "style", "metrics", "source", "created_at")  # object metadata


@dataclass
class TaskPrompt:
    """One task's soft prompt with everything needed to use it."""
    taskname: str
    embeddings: torch.Tensor  # (n_virtual, hidden) float32, CPU
    template: dict
    style: str  # "prompt-tuning" | "p-tuning" | "imported"
    base_model: BaseModelFingerprint
    metrics: dict = field(default_factory=dict)
    source: dict = field(default_factory=dict)
    created_at: str = ""  # ISO-8601 UTC; filled at publish time if empty
    version: str | None = None  # set when read from a table
    encoding: TaskEncoding = field(default_factory=TaskEncoding)  # how its examples were tokenized

    @property
    def num_virtual_tokens(self) -> int:
        """n_virtual: the rows of `embeddings`."""
        return int(self.embeddings.shape[0])

    @property
    def label(self) -> str:
        """How messages name it: `task 'x' version 'v…'` (`task 'x'` before it is published)."""
        return f"task {self.taskname!r}" + (f" version {self.version!r}" if self.version else "")

    def check_against(self, base_model: BaseModelFingerprint | None,
                      tokenizer: TokenizerFingerprint | None = None) -> None:
        """Raise BaseModelMismatchError when it was trained on another base model than `base_model`, or
        encoding.TokenizerMismatchError (a subclass) when with another tokenizer than `tokenizer`; what is
        None (or was not recorded at training) is not checked. Every loader checks prompts through this."""
        if base_model is not None:
            self.base_model.check_compatible(base_model, what=self.label)
        self.encoding.check_tokenizer(tokenizer, what=self.label)


def _tensor_problems(p: TaskPrompt, where: str) -> list[str]:
    emb = p.embeddings
    if not isinstance(emb, torch.Tensor) or emb.dim() != 2 or not emb.is_floating_point():
        got = (f"shape {tuple(emb.shape)} {emb.dtype}" if isinstance(emb, torch.Tensor)
               else type(emb).__name__)
        return [f"{where}: embeddings must be a 2-D float tensor (n_virtual, hidden), got {got}"]
    problems = []
    rows = p.template.get("total_virtual_tokens") if isinstance(p.template, dict) else None
    if emb.shape[0] != rows:
        problems.append(f"{where}: embeddings have {emb.shape[0]} rows but template "
                        f"total_virtual_tokens is {rows!r}; they must be equal")
    hidden = getattr(p.base_model, "hidden_size", None)
    if emb.shape[1] != hidden:
        problems.append(f"{where}: embeddings hidden size {emb.shape[1]} != base model hidden_size {hidden!r}")
    # numpy, not torch.isfinite: torch's intra-op threads make this 100x slower on a busy machine
    if emb.numel() and not bool(np.isfinite(emb.detach().to("cpu", torch.float32).numpy()).all()):
        problems.append(f"{where}: embeddings contain NaN or infinite values; re-train the task")
    return problems


def _is_json_dict(value: object) -> bool:
    try:
        return isinstance(value, dict) and bool(json.dumps(value))
    except (TypeError, ValueError):
        return False


def _field_problems(p: TaskPrompt, where: str) -> list[str]:
    problems = []
    if not isinstance(p.taskname, str) or not TASKNAME_RE.fullmatch(p.taskname):
        problems.append(f"{where}: taskname {p.taskname!r} is not a safe name; use 1-128 of "
                        f"letters, digits, '_', '.', '-', starting with a letter or digit")
    if p.style not in STYLES:
        problems.append(f"{where}: style {p.style!r} is not one of {', '.join(STYLES)}")
    if not isinstance(p.base_model, BaseModelFingerprint):
        problems.append(f"{where}: base_model must be a BaseModelFingerprint, got {type(p.base_model).__name__}")
    if not isinstance(p.encoding, TaskEncoding):
        problems.append(f"{where}: encoding must be a TaskEncoding, got {type(p.encoding).__name__}")
    if isinstance(p.template, dict) and p.template.get("taskname", p.taskname) != p.taskname:
        problems.append(f"{where}: template taskname {p.template['taskname']!r} != {p.taskname!r}")
    for name in ("template", "metrics", "source"):
        if not _is_json_dict(getattr(p, name)):
            problems.append(f"{where}: {name} must be a JSON-able dict")
    return problems


def validate_prompts(prompts: list[TaskPrompt]) -> None:
    """Raise ConfigError listing every problem of a publish, or return."""
    problems: list[str] = [] if prompts else ["nothing to publish: pass at least one TaskPrompt"]
    seen: set[str] = set()
    for i, p in enumerate(prompts):
        where = f"prompt #{i} ({getattr(p, 'taskname', '?')!r})"
        if not isinstance(p, TaskPrompt):
            problems.append(f"{where}: expected a TaskPrompt, got {type(p).__name__}")
            continue
        problems += _field_problems(p, where) + _tensor_problems(p, where)
        if isinstance(p.taskname, str) and p.taskname in seen:
            problems.append(f"{where}: taskname {p.taskname!r} appears more than once in one publish")
        seen.add(str(p.taskname))
    if problems:
        raise ConfigError(problems, title="cannot publish prompts")


def encode_prompt(p: TaskPrompt) -> bytes:
    """safetensors bytes of a prompt: tensor "embeddings" + JSON metadata under "promptray"."""
    meta = {k: getattr(p, k) for k in META_FIELDS}
    meta.update(format=OBJECT_FORMAT, base_model=p.base_model.to_dict(), encoding=p.encoding.to_dict())
    emb = p.embeddings.detach().to("cpu", torch.float32).contiguous()
    return st_save({"embeddings": emb}, metadata={"promptray": json.dumps(meta, sort_keys=True)})


def decode_prompt(data: bytes, version: str | None = None) -> TaskPrompt:
    """Inverse of encode_prompt."""
    try:
        (n,) = struct.unpack("<Q", data[:8])
        meta = json.loads(json.loads(data[8:8 + n])["__metadata__"]["promptray"])
        fields = {k: meta[k] for k in META_FIELDS}
        base_model = BaseModelFingerprint.from_dict(meta["base_model"])
        encoding = TaskEncoding.from_dict(meta.get("encoding"))  # absent in objects written before it
        emb = st_load(data)["embeddings"]
    except Exception as e:  # any malformed object
        raise PromptTableError(f"prompt object is unreadable ({type(e).__name__}: {e})") from e
    return TaskPrompt(embeddings=emb, base_model=base_model, version=version, encoding=encoding, **fields)

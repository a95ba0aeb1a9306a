"""How a task's records become token ids, stored with every task version so it is used as trained.

A task version's object carries, besides its template (fields, markers, `truncate_field`), a
`TaskEncoding`: whether a BOS token went first (`model.data.add_bos`), whether an EOS token ended each
training example (`model.data.add_eos`), and the identity of the tokenizer (`TokenizerFingerprint`).
Inference, serving, search evaluation and PEFT export read it instead of asking the user to remember it.
Objects published before it existed read as the defaults they were trained with (add_bos false, add_eos
true, tokenizer unknown: not checked).

`add_eos` changes only training targets (the model learns to end its answer with EOS); at inference no EOS
is fed and generation stops at EOS either way. The tokenizer fingerprint hashes what decides token ids
(vocabulary, BPE merges, the BOS/EOS ids and the ids of a fixed probe text); the tokenizer's name and class
are kept for messages only, so a copy of the same tokenizer in another folder, or its slow/fast twin that
encodes the same, is accepted.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Optional

from promptray.platform.errors import BaseModelMismatchError

log = logging.getLogger(__name__)

DEFAULT_ADD_BOS = False  # model.data.add_bos's default, and what objects without an encoding were trained with
DEFAULT_ADD_EOS = True
# a fixed text whose ids catch normalizer / pre-tokenizer differences (prefix spaces, digits, unicode, newlines)
PROBE_TEXT = "Hello world!  The 2 quick brown foxes jumped 1,234 times.\n\tCafé naïve — 東京 👍 <end>"


class TokenizerMismatchError(BaseModelMismatchError):
    """A task version is loaded with a tokenizer that encodes text differently from the one it was trained with."""


@dataclass(frozen=True)
class TokenizerFingerprint:
    """What a task's token ids depend on besides its template: the tokenizer's vocabulary and rules."""

    name: str  # name_or_path, for messages only
    tokenizer_class: str  # e.g. "GPT2TokenizerFast", for messages only
    vocab_size: int  # len(tokenizer): base vocabulary + added tokens
    bos_token_id: Optional[int]
    eos_token_id: Optional[int]
    sha256: str  # vocabulary, merges, BOS/EOS ids and the probe text's ids

    def to_dict(self) -> dict:
        """The fields as a JSON-ready dict (as stored with every prompt)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TokenizerFingerprint:
        """The inverse of `to_dict` (extra keys ignored; KeyError for a missing one)."""
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})

    def mismatches(self, other: TokenizerFingerprint) -> list[str]:
        """Differences that change token ids (name and class alone do not count)."""
        fields = ("vocab_size", "bos_token_id", "eos_token_id", "sha256")
        return [f"{f}: trained with {getattr(self, f)!r}, loaded {getattr(other, f)!r}"
                for f in fields if getattr(self, f) != getattr(other, f)]


def _merges(tokenizer) -> list[list[str]]:
    """The BPE merges of a fast tokenizer as [left, right] pairs (both serializations of `tokenizers`), else []."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return []
    merges = json.loads(backend.to_str()).get("model", {}).get("merges") or []
    return [m.split(" ", 1) if isinstance(m, str) else list(m) for m in merges]


def fingerprint_tokenizer(tokenizer) -> TokenizerFingerprint:
    """Fingerprint of a Hugging Face tokenizer (any `PreTrainedTokenizerBase`)."""
    content = {"vocab": sorted(tokenizer.get_vocab().items()), "merges": _merges(tokenizer),
               "bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id,
               "probe": tokenizer.encode(PROBE_TEXT, add_special_tokens=False)}
    digest = hashlib.sha256(json.dumps(content, ensure_ascii=False).encode("utf-8")).hexdigest()
    return TokenizerFingerprint(name=str(getattr(tokenizer, "name_or_path", "")),
                                tokenizer_class=type(tokenizer).__name__, vocab_size=len(tokenizer),
                                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                sha256=digest)


@dataclass(frozen=True)
class TaskEncoding:
    """How a task version's examples were encoded (see the module docstring)."""

    add_bos: bool = DEFAULT_ADD_BOS
    add_eos: bool = DEFAULT_ADD_EOS
    tokenizer: Optional[TokenizerFingerprint] = None  # None: unknown (published before it was recorded)

    @classmethod
    def of(cls, tokenizer, *, add_bos: bool, add_eos: bool) -> TaskEncoding:
        """The encoding of a training run with `tokenizer` and `model.data.add_bos` / `add_eos`."""
        return cls(bool(add_bos), bool(add_eos), fingerprint_tokenizer(tokenizer))

    def to_dict(self) -> dict:
        """{"add_bos", "add_eos", "tokenizer": its fingerprint's dict or None}, as stored with every prompt."""
        return {"add_bos": self.add_bos, "add_eos": self.add_eos,
                "tokenizer": self.tokenizer.to_dict() if self.tokenizer is not None else None}

    @classmethod
    def from_dict(cls, d: Optional[Mapping[str, Any]]) -> TaskEncoding:
        """Inverse of to_dict; None or missing keys read as the defaults (objects published before them)."""
        d = d or {}
        tok = d.get("tokenizer")
        return cls(bool(d.get("add_bos", DEFAULT_ADD_BOS)), bool(d.get("add_eos", DEFAULT_ADD_EOS)),
                   TokenizerFingerprint.from_dict(tok) if tok else None)

    def check_tokenizer(self, loaded: Optional[TokenizerFingerprint], what: str) -> None:
        """Raise TokenizerMismatchError when `loaded` encodes differently from the training tokenizer.
        Nothing to check when either is unknown."""
        if self.tokenizer is None or loaded is None:
            return
        problems = self.tokenizer.mismatches(loaded)
        if problems:
            raise TokenizerMismatchError(
                f"{what} was trained with tokenizer {self.tokenizer.name!r} ({self.tokenizer.tokenizer_class}) but "
                f"is being loaded with {loaded.name!r} ({loaded.tokenizer_class}); they differ in "
                + "; ".join(problems) + ", so its inputs would not be the token ids it was trained on. Load the "
                "base model folder (with its tokenizer) the task was trained with, or re-train the task.")


def add_bos_by_task(encodings: Mapping[str, TaskEncoding], tasks: Iterable[str],
                    override: Optional[bool]) -> dict[str, bool]:
    """Whether each task's prompts start with BOS: as trained (`override` None, the default), else `override`."""
    return {name: encodings.get(name, TaskEncoding()).add_bos if override is None else bool(override)
            for name in tasks}


def warn_bos_overrides(encodings: Mapping[str, TaskEncoding], tasks: Iterable[str], override: Optional[bool],
                       key: str = "add_BOS") -> list[str]:
    """log.warning for each of `tasks` trained with another add_bos than `override`; returns those tasks."""
    if override is None:
        return []
    differ = [n for n in dict.fromkeys(tasks) if encodings.get(n, TaskEncoding()).add_bos != bool(override)]
    for name in differ:
        trained = encodings.get(name, TaskEncoding()).add_bos
        log.warning("task %r was trained with add_bos=%s but %s=%s was given: its prompts are built %s BOS, "
                    "unlike its training (leave %s unset to use the trained value)", name, trained, key,
                    bool(override), "with" if override else "without", key)
    return differ

"""Task prompts of a serving replica: loaded on first use, kept in an LRU bounded in bytes, refreshed.

The manifest (which version of each task is current) is re-read when it is older than `refresh_s`, on
demand (`refresh()`), and before answering "unknown task", so a newly published task or version is
served without a restart. A loaded task version lives in the model's prompt bank under the key
`taskname@version` (so two versions of one task can share a batch) together with its prefix cache.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

import torch

from promptray.platform.data.encoding import TaskEncoding, TokenizerFingerprint
from promptray.platform.data.templates import TaskTemplate
from promptray.platform.errors import BaseModelMismatchError, PromptTableError
from promptray.platform.model.fingerprint import BaseModelFingerprint
from promptray.platform.model.prompt_encoder import PromptBank
from promptray.platform.table.table import PromptTable, VersionInfo
from promptray.serve.errors import TaskModelMismatchError, UnknownTaskError, UnknownVersionError
from promptray.serve.prefix_cache import PrefixCache


class ServingBank(PromptBank):
    """A prompt bank whose frozen prompts can be added and dropped at any time (keys: `task@version`)."""

    def __init__(self, hidden: int):
        super().__init__(hidden)
        self._prompts: dict[str, torch.Tensor] = {}

    def put(self, key: str, embeddings: torch.Tensor) -> None:
        """Hold a float32 copy of `embeddings` (n, H) on the bank's device under `key` (replacing one there);
        ValueError when its last dimension is not H."""
        if embeddings.shape[-1] != self.hidden:
            raise ValueError(f"prompt {key!r} has hidden size {embeddings.shape[-1]}, model has {self.hidden}")
        self._prompts[key] = embeddings.detach().to(self.device, torch.float32).clone()  # (n, H), the model's device

    def add_frozen(self, name: str, embeddings: torch.Tensor) -> None:
        """As `put`: how `loading.frozen_prompt_model` fills a bank."""
        self.put(name, embeddings)

    def drop(self, key: str) -> None:
        """Forget the prompt under `key` (nothing happens if it is not held)."""
        self._prompts.pop(key, None)

    @property
    def names(self) -> list[str]:
        """The keys held, in the order they were put."""
        return list(self._prompts)

    def get(self, name: str) -> torch.Tensor:
        """The (n, H) prompt under `name`; KeyError when it is not loaded."""
        if name not in self._prompts:
            raise KeyError(f"prompt {name!r} is not loaded")
        return self._prompts[name]


@dataclass
class LoadedTask:
    """A task version loaded into the replica: its bank key, template, encoding and size in bytes (prompt and
    prefix cache, what the LRU counts)."""

    key: str  # name in the prompt bank and the prefix cache
    taskname: str
    version: str
    template: TaskTemplate
    nbytes: int
    encoding: TaskEncoding = TaskEncoding()  # as trained: BOS first or not, the tokenizer


def task_key(taskname: str, version: str) -> str:
    """`taskname@version`: a loaded task version's name in the prompt bank and the prefix cache."""
    return f"{taskname}@{version}"


class PromptStore:
    """Resolve (taskname, pinned version or None) to a loaded task version; LRU-evict beyond `max_bytes`."""

    def __init__(self, table: PromptTable, fingerprint: BaseModelFingerprint, bank: ServingBank,
                 prefixes: PrefixCache, max_bytes: int, refresh_s: float,
                 tokenizer: Optional[TokenizerFingerprint] = None):
        self.table, self.fingerprint, self.bank, self.prefixes = table, fingerprint, bank, prefixes
        self.tokenizer = tokenizer  # the served tokenizer; task versions trained with another are refused
        self.max_bytes, self.refresh_s = max_bytes, refresh_s
        self._loaded: OrderedDict[str, LoadedTask] = OrderedDict()
        self._current: dict[str, VersionInfo] = {}
        self._read_at = float("-inf")
        self.unservable: dict[str, str] = {}  # task@version -> why it cannot be served on this base model
        self.lock = threading.RLock()  # held while loading/evicting and while a batch reads the bank

    def refresh(self) -> dict[str, VersionInfo]:
        """Read the manifest now; returns taskname -> current version info."""
        current = {info.taskname: info for info in self.table.describe()}
        self._current, self._read_at = current, time.monotonic()
        return current

    def current(self) -> dict[str, VersionInfo]:
        """taskname -> current version info, from a manifest read at most `refresh_s` seconds ago."""
        if time.monotonic() - self._read_at > self.refresh_s:
            self.refresh()
        return self._current

    def resolve(self, taskname: str, version: Optional[str] = None) -> LoadedTask:
        """The loaded task version a request names (None: the current one), loading it if needed.
        UnknownTaskError (after re-reading the manifest), UnknownVersionError, TaskModelMismatchError."""
        current = self.current()
        if taskname not in current and version is None:
            current = self.refresh()  # it may have been published since the last read
        if version is None:
            if taskname not in current:
                raise UnknownTaskError(f"unknown task {taskname!r}; known tasks: {sorted(current)}",
                                       known_tasks=sorted(current))
            version = current[taskname].version
        return self.load(taskname, version)

    def load(self, taskname: str, version: str, in_use: frozenset[str] = frozenset()) -> LoadedTask:
        """A task version, from the LRU or loaded from the table (with its prefix cache). Eviction spares
        `in_use` (the keys of a batch about to run), so a batch may briefly exceed the byte bound."""
        key = task_key(taskname, version)
        with self.lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
            if key in self.unservable:  # versions are immutable: no need to read it again
                raise TaskModelMismatchError(self.unservable[key], taskname=taskname, version=version)
            try:
                prompt = self.table.get(taskname, version, base_model=self.fingerprint, tokenizer=self.tokenizer)
            except BaseModelMismatchError as e:  # the server's model or tokenizer is not the task's: not a 404
                self.unservable[key] = f"{e} (It cannot be served by this server.)"  # e names task and version
                raise TaskModelMismatchError(self.unservable[key], taskname=taskname, version=version) from None
            except PromptTableError as e:
                raise UnknownVersionError(str(e), taskname=taskname, version=version) from None
            template = TaskTemplate.model_validate(prompt.template)
            self.bank.put(key, prompt.embeddings)
            self.prefixes.add(key, template, add_bos=prompt.encoding.add_bos)
            nbytes = prompt.embeddings.numel() * 4 + self.prefixes.nbytes(key)
            task = LoadedTask(key, taskname, version, template, nbytes, prompt.encoding)
            self._loaded[key] = task
            self._evict(keep=in_use | {key})
            return task

    def _evict(self, keep: frozenset[str]) -> None:
        """Drop least recently used task versions until the total fits `max_bytes` (never those in `keep`)."""
        while self.loaded_bytes > self.max_bytes:
            key = next((k for k in self._loaded if k not in keep), None)
            if key is None:
                return
            self._loaded.pop(key)
            self.bank.drop(key)
            self.prefixes.drop(key)

    @property
    def loaded(self) -> list[str]:
        """Keys of the loaded task versions, least recently used first."""
        return list(self._loaded)

    @property
    def loaded_bytes(self) -> int:
        """Bytes the loaded task versions take (prompts as float32 plus prefix caches)."""
        return sum(t.nbytes for t in self._loaded.values())

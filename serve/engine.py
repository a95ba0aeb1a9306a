"""One serving replica's engine (no Ray, no HTTP): the base model once, every task of a prompt table.

`encode` turns one request input into a model-ready example (validating its fields and length);
`scheduler` makes the replica's continuous-batching scheduler for such examples (rows from `row`);
`stream` decodes one static batch of them, of any tasks and parameters, in one forward pass per step.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Optional

import torch

from promptray.platform.data.dataset import Example, Record, Tokenization, encode_record
from promptray.platform.errors import BaseModelMismatchError
from promptray.platform.generation.decode import DecodeRow, RowEvent
from promptray.platform.generation.inference import text_ids
from promptray.platform.generation.loading import load_prompt_model
from promptray.platform.generation.logprobs import TokenLogprob, merge_logprobs, openai_logprobs, prompt_logprobs
from promptray.platform.generation.scheduler import Limits, Scheduler
from promptray.platform.model.devices import resolve_device
from promptray.platform.table.manifest import VersionInfo
from promptray.platform.table.table import PromptTable
from promptray.serve.decoding import request_row, stream_decode
from promptray.serve.errors import InputFieldError, InputTooLongError, TaskModelMismatchError
from promptray.serve.prefix_cache import PrefixCache
from promptray.serve.prompts import LoadedTask, PromptStore, ServingBank, task_key
from promptray.serve.schemas import SamplingParams, ServerSettings, TaskInfo

log = logging.getLogger(__name__)
UNLIMITED = 10**9


@dataclass
class Prepared:
    """One request input, encoded: what the batch runs and what the answer reports."""

    task: LoadedTask
    example: Example  # taskname is the bank key (task@version)
    params: SamplingParams
    truncated: bool = False  # the task's truncate_field was cut to fit

    @property
    def prompt_tokens(self) -> int:
        """The prompt's length in tokens, virtual ones included (OpenAI's usage.prompt_tokens)."""
        return len(self.example)


def input_fields(task: LoadedTask) -> list[str]:
    """The fields a request fills: all template fields but the one the model generates."""
    target = task.template.target_field
    return [f for f in dict.fromkeys(task.template.fields) if f != target]


def _model_card(name: str, info: VersionInfo) -> dict:
    """OpenAI's model object for a task: `created` is when its current version was published (Unix seconds)."""
    try:
        created = int(datetime.fromisoformat(info.created_at.replace("Z", "+00:00")).timestamp())
    except ValueError:
        created = 0  # not ISO-8601 (a hand-made table): unknown
    return {"id": name, "object": "model", "created": created, "owned_by": "promptray", "version": info.version}


def resolve_precision(precision: str) -> str:
    """auto: bf16, as training does (on GPUs only where the device supports it)."""
    if precision != "auto":
        return precision
    if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        return "fp32"
    return "bf16"


class ServeEngine:
    """One serving replica's engine: the base model once, with the prompts of a table's tasks loaded on demand.

    Built from `ServerSettings` (serve/schemas.py): `load_prompt_model` loads the base model (`settings.model`,
    else the one the table's tasks were trained on) with no prompts, in `precision` ("auto": bf16 where the
    device supports it) on the `accelerator`'s device, with a `ServingBank` that can add and drop prompts.
    Holds `model` (`PromptLearningModel`), `tokenizer`, `bank`, `prefixes` (`PrefixCache`: each task's
    constant prompt start as a KV cache), `prompts` (`PromptStore`: the table's current versions, its manifest
    read again once older than `refresh_s`, and an LRU of loaded task versions whose prompts and prefix caches
    stay within `prompt_cache_bytes`) and `model_name`.

    `encode` validates and tokenizes one input into a `Prepared` row; `stream` decodes a batch of them, of any
    tasks and sampling parameters, with the decode core (serve/decoding.py -> generation/decode.py), yielding
    per step one `RowEvent` or None per row. Construction raises what `load_prompt_model` raises and
    BaseModelMismatchError when no current task of the table fits the base model; requests raise serving
    errors (serve/errors.py: UnknownTaskError, UnknownVersionError, InputFieldError, InputTooLongError,
    TaskModelMismatchError), which the HTTP layer turns into 4xx answers.
    """

    def __init__(self, settings: ServerSettings):
        self.settings = settings
        table = PromptTable(settings.table)
        loaded = load_prompt_model(table, settings.model, [], resolve_precision(settings.precision),
                                   resolve_device(settings.accelerator), bank=ServingBank, setting="model (--model)")
        self.model, self.tokenizer, self.bank = loaded.model, loaded.tokenizer, loaded.model.bank
        self.prefixes = PrefixCache(self.model, self.tokenizer, enabled=settings.prefix_cache)
        self.prompts = PromptStore(table, loaded.fingerprint, self.bank, self.prefixes, settings.prompt_cache_bytes,
                                   settings.refresh_s, tokenizer=loaded.tokenizer_fingerprint)
        self.model_name = loaded.fingerprint.name
        self.check_servable()

    def check_servable(self) -> None:
        """Refuse a table none of whose current tasks was trained on this base model (BaseModelMismatchError,
        naming the first mismatch). Stops at the first task that fits (one read when the table is right);
        mismatches met before it are logged, and such tasks are left out of listings (409 when asked for)."""
        problems = []
        for name, info in sorted(self.prompts.current().items()):
            try:
                self.prompts.load(name, info.version)
                break
            except TaskModelMismatchError as e:
                problems.append(e.message)
        else:
            if problems:
                raise BaseModelMismatchError(
                    f"none of the {len(problems)} task(s) of prompt table {self.settings.table!r} can be served on "
                    f"base model {self.model_name!r}: {problems[0]}")
        for p in problems:
            log.warning("%s", p)

    def _servable(self) -> list[tuple[str, VersionInfo, LoadedTask]]:
        """(name, current version info, loaded task) of every current task this base model can serve."""
        out = []
        for name, info in sorted(self.prompts.current().items()):
            try:
                out.append((name, info, self.prompts.load(name, info.version)))
            except TaskModelMismatchError:
                continue  # listed by unservable()
        return out

    def unservable(self) -> dict[str, str]:
        """taskname -> why its current version cannot be served here (trained on another base model), for the
        versions checked so far: at start, on a request, or by listing (`tasks()`/`model_cards()` check all)."""
        current = self.prompts.current()
        return {name: why for name, info in sorted(current.items())
                if (why := self.prompts.unservable.get(task_key(name, info.version)))}

    def tasks(self) -> list[TaskInfo]:
        """Every servable task's current version, prompt length and fields (`GET /v1/tasks`)."""
        return [TaskInfo(name=name, version=info.version, virtual_tokens=info.num_virtual_tokens,
                         fields=list(dict.fromkeys(task.template.fields)), input_fields=input_fields(task))
                for name, info, task in self._servable()]

    def model_cards(self) -> list[dict]:
        """Every servable task as an OpenAI model object (`GET /v1/models`)."""
        return [_model_card(name, info) for name, info, _ in self._servable()]

    def model_card(self, name: str) -> dict:
        """One task as an OpenAI model object; UnknownTaskError (404) / TaskModelMismatchError (409)."""
        self.prompts.resolve(name)  # re-reads the manifest for a name it does not know yet
        return _model_card(name, self.prompts.current()[name])

    def encode(self, taskname: str, fields: dict, version: Optional[str], params: SamplingParams) -> Prepared:
        """Validate and encode one input (raises UnknownTask/InputField/InputTooLong errors), formatted as
        its task version was trained (BOS first when it was trained with add_bos)."""
        task = self.prompts.resolve(taskname, version)
        self._check_fields(task, fields)
        limit, why = self._prompt_limit(params.max_tokens)
        tok, record = Tokenization.of(self.tokenizer), Record({"taskname": taskname, **fields}, "request")
        bos = task.encoding.add_bos
        example, truncated = encode_record(task.template, record, tok, limit, add_bos=bos, inference=True)
        if example is None:
            full, _ = encode_record(task.template, record, tok, UNLIMITED, add_bos=bos, inference=True)
            n = len(full) if full is not None else -1
            hint = "" if limit == self.settings.max_prompt_tokens else " or lower max_tokens"
            raise InputTooLongError(
                f"the prompt of task {taskname!r} has {n} tokens (with {task.template.total_virtual_tokens} "
                f"virtual), more than {limit} ({why}), and its template has no truncate_field to cut; shorten the "
                f"input{hint}", param="fields", prompt_tokens=n, max_tokens=params.max_tokens,
                max_positions=self.model.max_positions, max_prompt_tokens=self.settings.max_prompt_tokens,
                kv_budget_tokens=self.settings.kv_budget_tokens)
        example.taskname = task.key
        return Prepared(task, example, params, truncated)

    def _prompt_limit(self, max_tokens: int) -> tuple[int, str]:
        """(most prompt tokens, virtual ones included, a request may have, what sets it): the model's positions
        and the server's KV budget, each less max_tokens, and max_prompt_tokens. A longer prompt is cut at its
        template's truncate_field (the response says `truncated`), or refused when it has none."""
        s, positions = self.settings, self.model.max_positions
        return min((positions - max_tokens, f"the model's {positions} positions less max_tokens {max_tokens}"),
                   (s.max_prompt_tokens, f"this server's max_prompt_tokens {s.max_prompt_tokens}"),
                   (s.kv_budget_tokens - max_tokens,
                    f"this server's kv_budget_tokens {s.kv_budget_tokens} less max_tokens {max_tokens}"))

    @staticmethod
    def _check_fields(task: LoadedTask, fields: dict) -> None:
        wanted = input_fields(task)
        missing = [f for f in wanted if f not in fields]
        unknown = [f for f in fields if f not in wanted]
        problems = [f"missing field {f!r}" for f in missing] + [f"unknown field {f!r}" for f in unknown]
        if problems:
            raise InputFieldError(f"task {task.taskname!r}: {'; '.join(problems)} (input fields: {wanted})",
                                  param=f"fields.{(unknown or missing)[0]}", missing=missing, unknown=unknown,
                                  input_fields=wanted)

    def decode(self, ids: list[int]) -> str:
        """The text of token ids, special tokens (EOS, padding) left out."""
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    @contextlib.contextmanager
    def tasks_loaded(self, examples: Sequence[Example]) -> Iterator[None]:
        """A context under the store's lock in which the task version of every example (its `taskname` is the
        bank key `task@version`) is loaded, none evicted: what a pass that reads prompts runs in."""
        keys = list(dict.fromkeys(e.taskname for e in examples))
        with self.prompts.lock:
            for key in keys:  # back in the LRU if it was evicted since it was encoded
                taskname, version = key.rsplit("@", 1)
                self.prompts.load(taskname, version, frozenset(keys))
            yield

    def _locked(self, batch: Sequence[Prepared], fn):
        """`fn()` with every task version of `batch` loaded (see `tasks_loaded`)."""
        with self.tasks_loaded([p.example for p in batch]):
            return fn()

    def scheduler(self) -> Scheduler:
        """This replica's scheduler (platform/generation/scheduler.py) with the settings' batching policy and
        limits, prefilling through the prefix cache with the prompts of its rows kept loaded."""
        s = self.settings
        limits = Limits(max_rows=s.max_batch_size, kv_budget_tokens=s.kv_budget_tokens, max_waiting=s.max_queue,
                        prefill_chunk_tokens=s.prefill_chunk_tokens, batch_wait_s=s.batch_wait_timeout_s)
        return Scheduler(self.model, self.tokenizer.pad_token_id, limits=limits, policy=s.batching,
                         prefill=self.prefixes.prefill, guard=self.tasks_loaded, run_tokens=self.prefixes.run_tokens)

    def row(self, p: Prepared) -> DecodeRow:
        """The decode core's row of a prepared input (its own generator when seeded)."""
        return request_row(p.params, self.tokenizer.eos_token_id, self.decode, self.model.device)

    def stream(self, batch: Sequence[Prepared]) -> Iterator[list[Optional[RowEvent]]]:
        """Decode a batch; per step one event (or None) per row. The prompt pass holds the store's lock."""
        tok = self.tokenizer
        prefill = self.prefixes.prefill  # the plain prompt pass where the prefix cache is off

        def locked_prefill(model, examples, pad_id):
            return self._locked(batch, lambda: prefill(model, examples, pad_id))

        return stream_decode(self.model, [p.example for p in batch], [p.params for p in batch], locked_prefill,
                             tok.pad_token_id, tok.eos_token_id, self.decode)

    def prompt_text(self, p: Prepared) -> str:
        """The prompt as the model read it, virtual tokens left out (they are not text): what `echo` shows."""
        return self.decode(text_ids(p.example))

    def logprobs(self, p: Prepared, entries: Sequence[TokenLogprob], echo: bool) -> dict:
        """OpenAI's legacy `logprobs` object of a completion (`entries`: one per token of its text), with the
        prompt's tokens first when `echo` (each scored given all positions before it, virtual ones included;
        a first token at position 0 gets null, as OpenAI's echo)."""
        ids = [e.token_id for e in entries]
        if not echo:
            return openai_logprobs(entries, ids, self.decode)
        scored = self._locked([p], lambda: prompt_logprobs(self.model, p.example, self.tokenizer.pad_token_id,
                                                           p.params.logprobs or 0))
        prompt = openai_logprobs([lp for _, lp in scored], [p.example.input_ids[t] for t, _ in scored], self.decode)
        start = len(self.prompt_text(p))
        return merge_logprobs(prompt, openai_logprobs(entries, ids, self.decode, start))

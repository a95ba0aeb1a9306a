"""Iteration-level (continuous) batching on the decode core: one running batch that requests join and leave
between decoding steps (no Ray, no HTTP: a serving replica and offline inference both run it).

Each `step()`:
1. admit waiting requests, first come first served, while the rows (running and being prefilled) stay within
   `Limits.max_rows` and the KV budget (`Limits.kv_budget_tokens`, counted as rows x the longest row's prompt +
   max_new_tokens: what a left-padded batch may come to hold);
2. prefill admitted rows, at most `prefill_chunk_tokens` prompt tokens per step while other rows are
   decoding: short prompts together in one pass (through the given `Prefill`, e.g. serving's prefix cache),
   a longer prompt a chunk per step on its own cache, so it does not stall the running streams; a row whose
   prompt is done joins the running batch (`DecodeBatch.join`);
3. decode: every running row chooses its next token (its `RowEvent`, if any, goes out now), rows that
   finished (EOS, stop id or string, max_new_tokens) or were cancelled leave (`DecodeBatch.keep`), and one
   forward pass runs for the others.

Policy "static" is the classic batch for comparison: requests are admitted only into an empty batch (after
waiting up to `Limits.batch_wait_s` for it to fill), prefilled whole, and the batch runs until its last row
ends. A model whose KV cache cannot be edited row by row (`kv_rows.editable_cache`: sliding windows and the
like) is always run that way.

`submit` and `cancel` may be called from any thread while another one runs `step`.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from typing import Optional

import torch

from promptray.platform.data.dataset import Example
from promptray.platform.generation.admission import (
    Limits,
    Output,
    QueueFullError,
    Request,
    RequestTooLargeError,
    head,
)
from promptray.platform.generation.decode import DecodeBatch, DecodeRow, Prefill, RowEvent, prefill_plain, seen_tokens
from promptray.platform.generation.kv_rows import cache_slots, editable_cache
from promptray.platform.generation.scheduler_stats import SchedulerStats
from promptray.platform.model.prompt_model import PromptLearningModel

__all__ = ["POLICIES", "Guard", "Limits", "Output", "QueueFullError", "RequestTooLargeError", "Scheduler",
           "run_to_end"]
POLICIES = ("continuous", "static")
Guard = Callable[[Sequence[Example]], contextlib.AbstractContextManager]
"""examples -> a context in which their tasks' prompts stay in the model's bank (serving's prompt LRU)."""


class Scheduler:
    """One running batch on `model`, fed by `submit` and advanced by `step` (see the module docstring).

    `prefill`: the prompt pass (default the plain one; serving passes its prefix cache's); `guard`: a context
    around every pass that reads prompts (default none); `run_tokens`: prompt tokens a prefill of an example
    runs (default its length; serving subtracts the cached prompt start). `stats` counts what happens."""

    def __init__(self, model: PromptLearningModel, pad_id: int, *, limits: Optional[Limits] = None,
                 policy: str = "continuous", prefill: Prefill = prefill_plain, guard: Optional[Guard] = None,
                 run_tokens: Callable[[Example], int] = len, clock: Callable[[], float] = time.monotonic):
        if policy not in POLICIES:
            raise ValueError(f"batching policy {policy!r}: use one of {POLICIES}")
        self.model, self.pad_id, self.limits, self.policy = model, pad_id, limits or Limits(), policy
        self.prefill, self.run_tokens, self.clock = prefill, run_tokens, clock
        self.guard = guard or (lambda examples: contextlib.nullcontext())
        self.stats = SchedulerStats(clock)
        self._lock = threading.Lock()
        self._waiting: deque[Request] = deque()
        self._cancel: set[Hashable] = set()
        self._filling: list[Request] = []
        self._running: dict[int, Request] = {}  # id(row) -> request, for the rows of `_batch`
        self._batch: Optional[DecodeBatch] = None
        self.editable = self._probe_editable()

    @torch.no_grad()
    def _probe_editable(self) -> bool:
        """Whether the model's cache can be edited row by row (one forward pass of one token)."""
        dev = self.model.device
        tok = torch.full((1, 1), self.pad_id, dtype=torch.long, device=dev)  # (1, 1)
        _, past = self.model.step(self.model.token_embeddings(tok), torch.ones_like(tok), torch.zeros_like(tok))
        return editable_cache(past)

    @property
    def static(self) -> bool:
        """Whether rows are admitted only into an empty batch and stay until the batch ends."""
        return self.policy == "static" or not self.editable

    # ------------------------------------------------------------------ from any thread

    def submit(self, rid: Hashable, example: Example, row: DecodeRow) -> None:
        """Queue a request (see `submit_many`)."""
        self.submit_many([(rid, example, row)])

    def submit_many(self, items: Sequence[tuple[Hashable, Example, DecodeRow]]) -> None:
        """Queue requests (rid, example, row), all or none. RequestTooLargeError when one could never fit the
        KV budget, or when there are more than the queue and the running batch could ever hold at once
        (`max_waiting` + `max_rows`); QueueFullError (counted as rejected) when they do not fit now: waiting
        requests may number `max_waiting` beyond those the next step admits (free rows within the KV budget)."""
        reqs = [self._request(rid, example, row) for rid, example, row in items]
        most = self.limits.max_waiting + self.limits.max_rows
        if len(reqs) > most:
            raise RequestTooLargeError(
                f"{len(reqs)} inputs in one request: this server queues {self.limits.max_waiting} and runs "
                f"{self.limits.max_rows} at once, so it takes at most {most} inputs per request; send fewer")
        with self._lock:
            if len(self._waiting) + len(reqs) - self._admissible(reqs) > self.limits.max_waiting:
                self.stats.count("rejected", len(reqs))
                raise QueueFullError(f"the server is busy: {len(self._waiting)} requests are waiting (its queue "
                                     f"holds {self.limits.max_waiting}); retry later", self.retry_after_s())
            self._waiting.extend(reqs)

    def _admissible(self, extra: Sequence[Request]) -> int:
        """How many of the waiting requests, then `extra`, the next step would admit (as `_admit` and `_fits`
        decide, first come first served). Reads copies of what the stepping thread changes."""
        members = [*self._running.copy().values(), *list(self._filling)]
        if self.static and (self._batch is not None or members):
            return 0
        rows, longest, n = len(members), max((r.reserve for r in members), default=0), 0
        for req in [*self._waiting, *extra]:
            if not self._one_more_fits(rows, longest, req.reserve):
                break
            rows, longest, n = rows + 1, max(longest, req.reserve), n + 1
        return n

    def _request(self, rid: Hashable, example: Example, row: DecodeRow) -> Request:
        """A Request; RequestTooLargeError when it could never fit the KV budget."""
        reserve = len(example) + row.params.max_new_tokens
        if reserve > self.limits.kv_budget_tokens:
            raise RequestTooLargeError(
                f"the prompt's {len(example)} tokens + max_new_tokens {row.params.max_new_tokens} exceed the KV "
                f"budget of {self.limits.kv_budget_tokens} tokens per replica")
        return Request(rid, example, row, self.clock(), reserve, self.run_tokens(example))

    def cancel(self, rid: Hashable) -> None:
        """Forget request `rid` at the next step (waiting, being prefilled or running); no more outputs."""
        with self._lock:
            self._cancel.add(rid)

    def retry_after_s(self) -> int:
        """Seconds until a refused request may find room: the waiting requests served `max_rows` at a time at
        the mean latency of finished requests (1 s before any), at least 1."""
        per_request = self.stats.latency.mean or 1.0
        return max(1, math.ceil(len(self._waiting) * per_request / self.limits.max_rows))

    # ------------------------------------------------------------------ state

    @property
    def waiting(self) -> int:
        """Requests submitted and not yet admitted (the queue depth)."""
        return len(self._waiting)

    @property
    def idle(self) -> bool:
        """Nothing waiting, being prefilled or running."""
        return not self._waiting and not self._filling and self._batch is None

    def snapshot(self) -> dict:
        """Queue depth, rows being prefilled and running, KV slots held (rows x cache length) and reserved."""
        batch = self._batch
        rows = len(batch.rows) if batch is not None else 0
        held = rows * cache_slots(batch.past) if batch is not None else 0
        held += sum(r.state.mask.shape[1] for r in self._filling if r.state is not None)
        return {"waiting": len(self._waiting), "prefilling": len(self._filling), "running": rows,
                "kv_tokens_held": held, "kv_tokens_reserved": self._reserved(),
                "kv_budget_tokens": self.limits.kv_budget_tokens, "max_rows": self.limits.max_rows,
                "policy": "static" if self.static else "continuous"}

    def _members(self) -> list[Request]:
        return [*self._running.values(), *self._filling]

    def _reserved(self, extra: Optional[Request] = None) -> int:
        """KV slots the rows (and `extra`) may come to hold: rows x the longest reservation."""
        members = self._members() + ([extra] if extra is not None else [])
        return len(members) * max((r.reserve for r in members), default=0)

    # ------------------------------------------------------------------ one step

    @torch.no_grad()
    def step(self) -> list[Output]:
        """Admit, prefill, decode one token for every running row; what happened, per request."""
        self.model.eval()
        self._apply_cancels()
        self._admit()
        out = self._prefill()
        out += self._decode()
        return out

    def _apply_cancels(self) -> None:
        with self._lock:
            cancel, self._cancel = self._cancel, set()
            if not cancel:
                return
            self._waiting = deque(r for r in self._waiting if r.rid not in cancel)
        gone = [r for r in self._filling if r.rid in cancel]
        gone += [r for r in self._running.values() if r.rid in cancel and not r.row.done]
        self._filling = [r for r in self._filling if r.rid not in cancel]
        for r in gone:
            r.row.finish_reason = "cancelled"  # the row ends: it leaves at this step's decode
            self.stats.count("cancelled")

    def _admit(self) -> None:
        if self.static and (self._batch is not None or self._filling or not self._static_ready()):
            return
        with self._lock:
            while self._waiting and self._fits(self._waiting[0]):
                self._filling.append(self._waiting.popleft())

    def _fits(self, req: Request) -> bool:
        members = self._members()
        return self._one_more_fits(len(members), max((r.reserve for r in members), default=0), req.reserve)

    def _one_more_fits(self, rows: int, longest: int, reserve: int) -> bool:
        """Whether a row reserving `reserve` KV slots may join `rows` rows whose longest reservation is
        `longest`: any row joins an empty batch; else within max_rows and the KV budget (rows x longest)."""
        return rows == 0 or (rows < self.limits.max_rows
                             and (rows + 1) * max(longest, reserve) <= self.limits.kv_budget_tokens)

    def _static_ready(self) -> bool:
        """Static policy: the queue holds a full batch, or its oldest request has waited batch_wait_s (the rest
        of that wait is slept here)."""
        with self._lock:
            if not self._waiting or len(self._waiting) >= self.limits.max_rows:
                return bool(self._waiting)
            left = self._waiting[0].arrived + self.limits.batch_wait_s - self.clock()
        if left > 0:
            time.sleep(left)
        return True

    # ------------------------------------------------------------------ prefill

    def _prefill(self) -> list[Output]:
        """This step's prompt work: a chunk of each long prompt planned, short prompts in one pass; rows whose
        prompt is done join the running batch."""
        if not self._filling:
            return []
        whole, chunked = (list(self._filling), []) if self.static else self._plan()
        out: list[Output] = []
        for req in chunked:
            out += self._guarded([req], lambda req=req: self._chunk(req))
        if whole:
            out += self._guarded(whole, lambda: self._pass([r.example for r in whole], [r.row for r in whole]))
        return out

    def _plan(self) -> tuple[list[Request], list[Request]]:
        """(short prompts to prefill whole, long ones to advance by a chunk), first come first served, within
        prefill_chunk_tokens run tokens while rows are decoding (no bound for short prompts otherwise)."""
        chunk = self.limits.prefill_chunk_tokens
        budget = chunk if self._batch is not None else math.inf
        whole: list[Request] = []
        chunked: list[Request] = []
        for req in self._filling:
            short = req.state is None and req.run_tokens <= chunk
            cost = req.run_tokens if short else min(chunk, len(req.example) - req.filled)
            if cost > budget and (whole or chunked):
                continue
            (whole if short else chunked).append(req)
            budget -= cost
        return whole, chunked

    def _pass(self, examples: Sequence[Example], rows: Sequence[DecodeRow]) -> DecodeBatch:
        """The prompt pass of `examples` as a batch ready to join."""
        logits, past, mask, pos = self.prefill(self.model, examples, self.pad_id)  # (B, V), cache, (B, T) x2
        seen = seen_tokens(examples, self.pad_id).to(self.model.device)  # (B, T)
        return DecodeBatch.of_state(self.model, rows, seen, logits, past, mask, pos)

    def _chunk(self, req: Request) -> Optional[DecodeBatch]:
        """Prefill the next chunk of a long prompt on its own 1-row cache (the first through `prefill`, with
        the cached prompt start); its batch once the whole prompt is done, else None."""
        e, chunk, dev = req.example, self.limits.prefill_chunk_tokens, self.model.device
        if req.state is None:
            n = min(len(e), len(e) - req.run_tokens + chunk)  # the cached prompt start + one chunk
            req.state, req.filled = self._pass([head(e, n)], [req.row]), n
        else:
            n, s = min(len(e), req.filled + chunk), req.state
            ids = torch.tensor([e.input_ids[req.filled:n]], device=dev)  # (1, c)
            emb = self.model.embed(ids, torch.tensor([e.virtual_ids[req.filled:n]], device=dev), [e.taskname])
            s.mask = torch.cat([s.mask, torch.ones_like(ids)], dim=1)  # (1, T + c)
            pos = s.pos[:, -1:] + torch.arange(1, n - req.filled + 1, device=dev)[None]  # (1, c)
            s.logits, s.past = self.model.step(emb, s.mask, pos, s.past)  # (1, V)
            s.pos, req.filled = pos[:, -1:], n
        if req.filled < len(e):
            return None
        req.state.seen = seen_tokens([e], self.pad_id).to(dev)  # (1, T)
        return req.state

    def _guarded(self, reqs: list[Request], run: Callable[[], Optional[DecodeBatch]]) -> list[Output]:
        """`run()` under the guard of `reqs`' examples; a finished batch joins the running one. A failing
        pass ends its requests (an error output each), not the scheduler."""
        try:
            with self.guard([r.example for r in reqs]):
                batch = run()
        except Exception as exc:  # noqa: BLE001 - reported to the requests it ended
            self._filling = [r for r in self._filling if r not in reqs]
            for _ in reqs:
                self.stats.count("failed")
            return [Output(r.rid, error=exc) for r in reqs]
        if batch is not None:
            self._filling = [r for r in self._filling if r not in reqs]
            self._running.update({id(r.row): r for r in reqs})
            if self._batch is None:
                self._batch = batch
            else:
                self._batch.join(batch)
        return []

    # ------------------------------------------------------------------ decode

    def _decode(self) -> list[Output]:
        """One token for every running row; finished rows leave (static: the batch ends with its last row)."""
        batch = self._batch
        if batch is None:
            return []
        self.stats.count_step(len(batch.rows), len({r.example.taskname for r in self._running.values()}))
        try:
            out = self._report(batch.choose(), self.clock())
            keep = [i for i, r in enumerate(batch.rows) if not r.done]
            if not keep:
                self._batch = None
                return out
            if not self.static and len(keep) < len(batch.rows):
                batch.keep(keep)
            batch.forward()
        except Exception as exc:  # noqa: BLE001 - a failed pass ends the running requests
            return self._fail_running(exc)
        return out

    def _report(self, events: list[Optional[RowEvent]], now: float) -> list[Output]:
        """Outputs of this step's events; token timing (first token, gaps) and finished requests counted."""
        out, tokens = [], 0
        for row, event in zip(self._batch.rows, events):
            req = self._running.get(id(row))
            if req is None:  # finished earlier (static batches keep their rows to the end)
                continue
            n = len(row.ids)
            if n > req.emitted:
                if req.emitted == 0:
                    self.stats.ttft.observe(now - req.arrived)
                else:
                    self.stats.itl.observe(now - req.last_token_at)
                tokens, req.emitted, req.last_token_at = tokens + n - req.emitted, n, now
            if event is not None:
                out.append(Output(req.rid, event))
            if row.done:
                del self._running[id(row)]
                if row.finish_reason != "cancelled":
                    self.stats.count("finished")
                    self.stats.latency.observe(now - req.arrived)
        self.stats.add_tokens(tokens, now)
        return out

    def _fail_running(self, exc: BaseException) -> list[Output]:
        reqs = list(self._running.values())
        self._running, self._batch = {}, None
        for _ in reqs:
            self.stats.count("failed")
        return [Output(r.rid, error=exc) for r in reqs]


def run_to_end(scheduler: Scheduler, items: Sequence[tuple[Hashable, Example, DecodeRow]]) -> list[Output]:
    """Submit every (rid, example, row) as room allows and step until all are done (offline use; the
    scheduler's `max_waiting` bounds how many wait at once). Every output, in order."""
    pending, out = deque(items), []
    while pending or not scheduler.idle:
        while pending and scheduler.waiting < scheduler.limits.max_waiting:
            scheduler.submit(*pending.popleft())
        out += scheduler.step()
    return out

"""A replica's scheduler at work (no Ray, no HTTP): a background thread steps it while requests wait on
asyncio queues for their events.

The request handlers run on the replica's event loop; the scheduler (platform/generation/scheduler.py) runs
its steps in one thread of its own, so decoding never blocks the loop. `submit` queues a row (refusals are
raised at once, before a response starts); `events` yields its `RowEvent`s as each step makes them; a handler
that stops listening early (the client went away, its task was cancelled) cancels the row, which leaves the
running batch at the next step.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from promptray.platform.data.dataset import Example
from promptray.platform.generation.decode import DecodeRow, RowEvent
from promptray.platform.generation.scheduler import Output, Scheduler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ticket:
    """A submitted row: its id in the scheduler and the queue its outputs arrive on."""

    rid: int
    queue: asyncio.Queue


class SchedulerRunner:
    """Steps `scheduler` in a daemon thread until `close()`; hands each output to its request's queue on the
    event loop that submitted it."""

    def __init__(self, scheduler: Scheduler):
        self.scheduler = scheduler
        self._open: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._ids = itertools.count()
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="promptray-scheduler", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._closed:
            if self.scheduler.idle:
                self._wake.wait(timeout=1.0)
                self._wake.clear()
                continue
            try:
                outputs = self.scheduler.step()
            except Exception as exc:  # noqa: BLE001 - a bug must not leave requests waiting forever
                log.exception("scheduler step failed; ending the open requests")
                outputs = [Output(rid, error=exc) for rid in list(self._open)]
                for rid in list(self._open):
                    self.scheduler.cancel(rid)
            for out in outputs:
                self._deliver(out)

    def _deliver(self, out: Output) -> None:
        target = self._open.get(out.rid)
        if target is not None:
            loop, queue = target
            try:
                loop.call_soon_threadsafe(queue.put_nowait, out)
            except RuntimeError:  # its event loop has closed: nobody is listening
                self._open.pop(out.rid, None)

    def submit(self, rows: Sequence[tuple[Example, DecodeRow]]) -> list[Ticket]:
        """Queue rows, all or none (call on the event loop). Raises what `Scheduler.submit_many` raises
        (QueueFullError, RequestTooLargeError)."""
        loop = asyncio.get_running_loop()
        tickets = [Ticket(next(self._ids), asyncio.Queue()) for _ in rows]
        for t in tickets:
            self._open[t.rid] = (loop, t.queue)
        try:
            self.scheduler.submit_many([(t.rid, e, r) for t, (e, r) in zip(tickets, rows)])
        except Exception:
            for t in tickets:
                del self._open[t.rid]
            raise
        self._wake.set()
        return tickets

    async def events(self, ticket: Ticket) -> AsyncIterator[RowEvent]:
        """The row's events as they are made, up to the one with its finish_reason; the error that ended it is
        raised. Leaving the iteration early cancels the row."""
        try:
            while True:
                out: Output = await ticket.queue.get()
                if out.error is not None:
                    self._open.pop(ticket.rid, None)
                    raise out.error
                if out.event.finish_reason is not None:
                    self._open.pop(ticket.rid, None)
                yield out.event
                if out.event.finish_reason is not None:
                    return
        finally:
            self.cancel(ticket)

    def cancel(self, ticket: Ticket) -> None:
        """Stop a row that has not finished (nothing happens for one that has)."""
        if self._open.pop(ticket.rid, None) is not None:
            self.scheduler.cancel(ticket.rid)
            self._wake.set()

    @property
    def open_requests(self) -> int:
        """Rows submitted and not finished."""
        return len(self._open)

    def close(self) -> None:
        """Stop the thread after its current step (open rows get nothing more)."""
        self._closed = True
        self._wake.set()


async def merge_streams(streams: list[AsyncIterator]) -> AsyncIterator[tuple[int, object]]:
    """(stream index, item) from several async iterators, in the order items arrive; an exception of one is
    raised here; leaving early cancels the tasks still reading."""
    merged: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(i: int, stream: AsyncIterator) -> None:
        try:
            async for item in stream:
                merged.put_nowait((i, item, None))
            merged.put_nowait((i, done, None))
        except Exception as exc:  # noqa: BLE001 - raised to the reader below
            merged.put_nowait((i, done, exc))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        finished = 0
        while finished < len(tasks):
            i, item, exc = await merged.get()
            if exc is not None:
                raise exc
            if item is done:
                finished += 1
            else:
                yield i, item
    finally:
        for task in tasks:
            task.cancel()

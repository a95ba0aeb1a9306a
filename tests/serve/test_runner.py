"""serve/runner.py: merging a request's input streams."""

from __future__ import annotations

import asyncio

import pytest

from promptray.serve.runner import merge_streams


async def _stream(items, delay: float, log: list, name: str):
    try:
        for x in items:
            await asyncio.sleep(delay)
            yield x
    finally:
        log.append(f"{name} closed")


def test_items_come_with_their_stream_index_in_arrival_order():
    async def run():
        log = []
        streams = [_stream("abc", 0.03, log, "slow"), _stream("xy", 0.01, log, "fast")]
        return [pair async for pair in merge_streams(streams)], log

    got, log = asyncio.run(run())
    assert sorted(got) == [(0, "a"), (0, "b"), (0, "c"), (1, "x"), (1, "y")]
    assert got[:2] == [(1, "x"), (1, "y")] and got[-1] == (0, "c")
    assert sorted(log) == ["fast closed", "slow closed"]


def test_an_error_in_one_stream_is_raised_and_the_others_stop():
    async def failing():
        yield "first"
        raise RuntimeError("row failed")

    async def run():
        log, seen = [], []
        with pytest.raises(RuntimeError, match="row failed"):
            async for pair in merge_streams([failing(), _stream(range(100), 0.01, log, "long")]):
                seen.append(pair)
        await asyncio.sleep(0.05)
        return seen, log

    seen, log = asyncio.run(run())
    assert (0, "first") in seen and len(seen) < 10 and log == ["long closed"]


def test_leaving_early_cancels_the_readers():
    async def run():
        log = []
        merged = merge_streams([_stream(range(100), 0.01, log, "a"), _stream(range(100), 0.01, log, "b")])
        async for _ in merged:
            break
        await merged.aclose()
        await asyncio.sleep(0.05)
        return log

    assert sorted(asyncio.run(run())) == ["a closed", "b closed"]

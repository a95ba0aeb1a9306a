"""Data-parallel training without Ray: 2 gloo processes on this machine against one process.

A 2-worker run (replicated or FSDP2-sharded frozen model) must end with the prompts of a 1-process run of
the same global batch and seed, and a loop restored from its checkpoint state must finish like an
uninterrupted one.
"""

from __future__ import annotations

import faulthandler
import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from promptray.platform.config.schema import PromptLearningConfig
from promptray.platform.ports import free_ports
from promptray.platform.train.distributed import Dist, average_gradients, shard_frozen_model
from promptray.platform.train.trainer import build_loop, train

from train_helpers import dp_config, full_and_resumed


def _worker(rank: int, world: int, port: int, raw: dict, shardings: list[str], out: str) -> None:
    """Runs in a spawned process: one loop per sharding mode on the same process group."""
    faulthandler.dump_traceback_later(60, exit=True)  # a hung collective fails the test instead of hanging it
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = {}
        for sharding in shardings:
            cfg = PromptLearningConfig.model_validate(raw)
            cfg.model.sharding = sharding
            cfg.exp_manager.name = f"dp-{sharding}"
            loop = build_loop(cfg, Dist(rank, world))
            watch = _watch_unsharded(loop.engine.model.lm)
            loop.run()
            result = loop.finish(publish=False)
            if rank == 0:
                results[sharding] = {"prompts": result.prompts, "records": loop.writer.records,
                                     "local_fraction": _local_fraction(loop.engine.model.lm), **watch}
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


def _blocks(lm):
    from promptray.platform.train.distributed import _largest_module_list

    return list(_largest_module_list(lm))


def _is_sharded(module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters(recurse=False)) or any(
        isinstance(p, DTensor) for m in module.children() for p in m.parameters())


def _watch_unsharded(lm) -> dict:
    """Counts, each time a block starts its forward, how many blocks hold their full (gathered) weights."""
    seen = {"max_gathered_blocks": 0}
    blocks = _blocks(lm)

    def hook(module, args):
        gathered = sum(not _is_sharded(b) for b in blocks)
        seen["max_gathered_blocks"] = max(seen["max_gathered_blocks"], gathered)
    for b in blocks:
        b.register_forward_pre_hook(hook)
    return seen


def _local_fraction(lm) -> float:
    """This worker's share of the blocks' parameter elements (1.0 when replicated)."""
    from torch.distributed.tensor import DTensor

    params = [p for b in _blocks(lm) for p in b.parameters()]
    local = sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in params)
    return local / sum(p.numel() for p in params)


def run_two_workers(cfg: PromptLearningConfig, shardings: list[str], tmp_path: Path) -> dict:
    out = tmp_path / "dp_results.pt"
    mp.start_processes(_worker, args=(2, free_ports(1)[0], cfg.model_dump(), shardings, str(out)), nprocs=2,
                       start_method="spawn")
    return torch.load(out, weights_only=False)


def _losses(records) -> list[float]:
    """step, loss, val loss (0 when none) of each record, flattened."""
    return [x for r in records for x in (r["step"], r["loss"], r.get("val_loss", 0.0))]


@pytest.mark.parametrize("style,model", [("prompt-tuning", "tiny_gpt2_path"), ("p-tuning", "tiny_llama_path")])
def test_two_workers_replicated_and_fsdp_match_one_process(style, model, tmp_path, request):
    cfg = dp_config(tmp_path, request.getfixturevalue(model), style)
    single = train(cfg, progress=False, publish=False)
    two = run_two_workers(cfg, ["none", "fsdp"], tmp_path)
    for sharding in ("none", "fsdp"):
        for task in ("a", "b"):
            torch.testing.assert_close(two[sharding]["prompts"][task], single.prompts[task], rtol=1e-4, atol=1e-5)
        ref = _losses(json.loads(line) for line in single.metrics_path.read_text().splitlines())
        got = _losses(two[sharding]["records"])
        assert got[::3] == [1, 2, 3, 4]
        assert got == pytest.approx(ref, rel=1e-4, abs=1e-5)  # step losses and val losses agree too
    # FSDP: between steps a worker holds half of every block; in a step only the running block is gathered
    assert two["none"]["local_fraction"] == 1.0 and two["fsdp"]["local_fraction"] == pytest.approx(0.5, abs=0.02)
    assert two["none"]["max_gathered_blocks"] == 2  # replicated: every block (tiny models have 2) always full
    assert 1 <= two["fsdp"]["max_gathered_blocks"] < 2
    initial = build_loop(cfg).engine.model.bank.export()  # training moved the prompts far beyond the tolerance
    assert all(float((single.prompts[t] - initial[t]).abs().max()) > 1e-2 for t in ("a", "b"))


def test_loop_resumed_from_its_state_finishes_like_an_uninterrupted_one(tmp_path, tiny_gpt2_path):
    cfg = dp_config(tmp_path, tiny_gpt2_path, "p-tuning", steps=6)
    cfg.model.p_tuning.dropout = 0.1  # the RNG stream must continue exactly where it stopped
    full, resumed, _ = full_and_resumed(cfg)
    assert full.engine.model._verified  # dropout did not make the shared-prefix check fail
    for task in ("a", "b"):
        torch.testing.assert_close(resumed.best_prompts[task], full.best_prompts[task], rtol=0, atol=0)
        torch.testing.assert_close(resumed.engine.model.bank.export()[task], full.engine.model.bank.export()[task],
                                   rtol=0, atol=0)
    assert _losses(resumed.writer.records) == _losses(full.writer.records)
    on_disk = [json.loads(line) for line in resumed.writer.path.read_text().splitlines()]
    assert [r["step"] for r in on_disk] == [1, 2, 3, 4, 5, 6]  # metrics.jsonl rewritten, then continued


def test_average_gradients_and_sharding_are_no_ops_in_one_process(tiny_gpt2):
    lm, _ = tiny_gpt2
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    average_gradients([p], Dist())
    assert torch.equal(p.grad, torch.full((3,), 2.0))
    assert shard_frozen_model(lm, Dist()) == 0

"""Data-parallel training without Ray: 2 gloo processes on this machine against one process.

A 2-worker run (replicated or FSDP2-sharded frozen model) must end with the prompts of a 1-process run of
the same global batch and seed, and a loop restored from its checkpoint state must finish like an
uninterrupted one.
"""

from __future__ import annotations

import faulthandler
import json
import os
import random
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from promptray.platform.config import PromptLearningConfig, load_config
from promptray.platform.distributed import Dist, average_gradients, shard_frozen_model
from promptray.platform.trainer import build_loop, train

WORDS = "apple river stone cloud green tiger music paper candle window garden silver".split()


def dp_config(tmp_path: Path, model: Path, style: str = "prompt-tuning", steps: int = 4, **ray) -> PromptLearningConfig:
    """Two tasks with different prompt lengths and answer lengths; global batch 8 = 2 x 2 workers x 2."""
    rng = random.Random(0)
    rows = [{"taskname": t, "text": " ".join(rng.sample(WORDS, rng.randint(2, 6))),
             "label": " ".join(rng.sample(WORDS, 1 if t == "a" else 3))} for t in ("a", "b") for _ in range(20)]
    data = tmp_path / "dp.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    templates = [{"taskname": t, "prompt_template": "<|VIRTUAL_PROMPT_0|> {text} label: {label}",
                  "total_virtual_tokens": k, "virtual_token_splits": [k], "answer_only_loss": True,
                  "answer_field": "label"} for t, k in (("a", 3), ("b", 5))]
    return load_config({"name": "dp", "trainer": {"max_steps": steps, "val_check_interval": 2, "precision": 32,
                                                  "log_every_n_steps": 1},
                        "exp_manager": {"exp_dir": str(tmp_path / "runs")}, "ray": {"num_workers": 2, **ray},
                        "model": {"language_model_path": str(model), "nemo_path": str(tmp_path / "table"),
                                  "virtual_prompt_style": style, "new_tasks": ["a", "b"],
                                  "task_templates": templates, "global_batch_size": 8, "micro_batch_size": 2,
                                  "data": {"train_ds": [str(data)], "validation_ds": [str(data)]},
                                  "optim": {"lr": 0.05}}})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    from promptray.platform.distributed import _largest_module_list

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
    mp.start_processes(_worker, args=(2, _free_port(), cfg.model_dump(), shardings, str(out)), nprocs=2,
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


def full_and_resumed(cfg: PromptLearningConfig, device=None):
    """(an uninterrupted run, a run stopped after step 3 and resumed from its state in a fresh loop, that state)."""
    full = build_loop(cfg, device=device)
    full.run()
    saved = {}

    class Stop(Exception):
        pass

    def stop_after_3(info):
        if info.step == 3:
            saved["state"] = info.loop.state_dict()
            raise Stop

    cfg.exp_manager.name = "interrupted"
    with pytest.raises(Stop):
        build_loop(cfg, device=device).run(on_step=stop_after_3)
    resumed = build_loop(cfg, device=device)
    resumed.load_state_dict(saved["state"])
    assert resumed.state.step == 3 and resumed.state.position == 12  # 3 steps x 4 micro-batches of 2
    resumed.run()
    return full, resumed, saved["state"]


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

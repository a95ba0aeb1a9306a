"""The learning-rate schedule (steps.lr_lambda: NeMo's CosineAnnealing with warmup, constant_steps and min_lr)
against transformers' cosine schedule with a min lr, which is its decay phase; the warmup and constant phases
are NeMo's own (transformers' warmup starts at lr 0 and it has no constant phase)."""

from __future__ import annotations

import pytest
import torch
from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

from promptray.platform.config.schema import load_config
from promptray.platform.train.steps import lr_lambda

LR = 0.1


def _cfg(sched: dict):
    return load_config({"name": "run", "trainer": {"max_steps": 10},
                        "model": {"nemo_path": "table.nemo", "language_model_path": "tiny", "new_tasks": ["s"],
                                  "global_batch_size": 8, "micro_batch_size": 4, "data": {"train_ds": ["t.jsonl"]},
                                  "task_templates": [{"taskname": "s", "total_virtual_tokens": 4,
                                                      "virtual_token_splits": [4],
                                                      "prompt_template": "<|VIRTUAL_PROMPT_0|> {x} y: {y}"}],
                                  "optim": {"lr": LR, "sched": sched}}})


def _lrs(make, steps: int) -> list[float]:
    """The lr used at each of the optimizer steps 0..steps-1 and after the last one (LambdaLR as the loop
    steps it)."""
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    sched = make(opt)
    out = []
    for _ in range(steps + 1):
        out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return out


def _ours(sched: dict, total: int) -> list[float]:
    return _lrs(lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(_cfg(sched), total)), total)


def _hf(total: int, min_lr: float) -> list[float]:
    return _lrs(lambda opt: get_cosine_with_min_lr_schedule_with_warmup(
        opt, num_warmup_steps=0, num_training_steps=total, min_lr=min_lr), total)


@pytest.mark.parametrize("total,min_lr", [(10, 0.0), (37, 0.01), (1, 0.02)])
def test_no_warmup_is_transformers_cosine_with_min_lr(total, min_lr):
    ours = _ours({"name": "CosineAnnealing", "min_lr": min_lr}, total)
    assert ours == pytest.approx(_hf(total, min_lr), rel=1e-12, abs=1e-15)
    assert ours[0] == pytest.approx(LR) and ours[-1] == pytest.approx(min_lr)


@pytest.mark.parametrize("sched,total,warmup", [
    ({"warmup_steps": 3, "constant_steps": 0, "min_lr": 0.0}, 20, 3),
    ({"warmup_steps": 4, "constant_steps": 5, "min_lr": 0.005}, 30, 4),
    ({"warmup_ratio": 0.1, "constant_steps": 2, "min_lr": 0.001}, 25, 2),  # int(0.1 x 25) = 2 steps
])
def test_warmup_then_constant_then_transformers_decay(sched, total, warmup):
    ours = _ours({"name": "CosineAnnealing", **sched}, total)
    constant = sched["constant_steps"]
    assert ours[:warmup] == pytest.approx([LR * (s + 1) / warmup for s in range(warmup)])  # NeMo: never lr 0
    assert ours[warmup:warmup + constant + 1] == pytest.approx([LR] * (constant + 1))
    decay = total - warmup - constant
    assert ours[warmup + constant:] == pytest.approx(_hf(decay, sched["min_lr"]), rel=1e-12, abs=1e-15)


def test_transformers_warmup_differs_so_ours_is_kept():
    """transformers' warmup gives lr 0 at step 0 (NeMo's gives lr / warmup_steps): the reason the warmup and
    constant phases stay ours."""
    hf = _lrs(lambda opt: get_cosine_with_min_lr_schedule_with_warmup(
        opt, num_warmup_steps=4, num_training_steps=20, min_lr=0.0), 20)
    ours = _ours({"name": "CosineAnnealing", "warmup_steps": 4}, 20)
    assert hf[0] == 0.0 and ours[0] == pytest.approx(LR / 4)


def test_constant_schedule():
    assert _ours({"name": "constant"}, 5) == pytest.approx([LR] * 6)

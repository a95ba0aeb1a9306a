"""Where a training step's time goes: promptray bf16 / fp32 vs PEFT fp32 (the sides of train_speed.py).

1. torch.profiler over a few steps per side: the share of matmuls, SDPA attention (forward / backward),
   (log-)softmax + NLL, and everything else (elementwise ops, norms, dtype copies).
2. promptray's own work around the language model: collate, virtual-embedding substitution, gradient
   clipping, the AdamW step.
3. promptray bf16 with three attention implementations, interleaved with PEFT fp32 in one run: SDPA as
   loaded (PyTorch picks its CPU flash kernel), SDPA forced to the math backend, and HF eager attention.

    python -m benchmarks.train_profile [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from benchmarks.common import machine, sentiment_splits, table, write_result
from benchmarks.train_speed import PeftSide, PromptraySide

MATMUL = {"aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear"}


def profile_side(step, n: int) -> dict:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            step()
    ka = prof.key_averages()
    total = sum(k.self_cpu_time_total for k in ka)
    share = lambda pred: round(sum(k.self_cpu_time_total for k in ka if pred(k.key)) / total, 3)  # noqa: E731
    att_fwd = lambda k: k.startswith("aten::_scaled_dot_product") and not k.endswith("_backward")  # noqa: E731
    att_bwd = lambda k: k.startswith("aten::_scaled_dot_product") and k.endswith("_backward")  # noqa: E731
    softmax = lambda k: "softmax" in k or "nll_loss" in k  # noqa: E731
    out = {"profiled_steps": n, "s_per_step_profiled": round(total / n / 1e6, 3),
           "matmul": share(lambda k: k in MATMUL), "attention_forward": share(att_fwd),
           "attention_backward": share(att_bwd), "softmax_nll": share(softmax)}
    named = ("matmul", "attention_forward", "attention_backward", "softmax_nll")
    out["other"] = round(1 - sum(out[k] for k in named), 3)
    top = sorted(ka, key=lambda k: -k.self_cpu_time_total)[:8]
    out["top_ops"] = {k.key: round(k.self_cpu_time_total / total, 3) for k in top}
    return out


def median_ms(f, n: int) -> float:
    f()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return round(statistics.median(ts) * 1e3, 3)


def overheads(side: PromptraySide, n: int = 20) -> dict:
    from promptray.platform.data.batching import collate

    m = side.engine.model
    ex = side.train_ex[:8]
    batch = collate(ex, side.engine.tokenizer.pad_token_id)
    params = m.trainable_parameters()
    with torch.no_grad():
        embed = median_ms(lambda: m.embed(batch.input_ids, batch.virtual_ids, batch.tasknames), n)
    return {"collate_ms": median_ms(lambda: collate(ex, side.engine.tokenizer.pad_token_id), n),
            "embed_with_virtual_rows_ms": embed,
            "clip_grad_norm_ms": median_ms(lambda: torch.nn.utils.clip_grad_norm_(params, 1.0), n),
            "optimizer_step_ms": median_ms(lambda: side.optimizer.step(), n),
            "trainable_parameters": sum(p.numel() for p in params)}


def attention_variants(work: Path, splits: dict, steps: int, block: int, warmup: int, progress: bool) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    sdpa = PromptraySide(work, splits, "bf16", warmup + steps)
    math_side = PromptraySide(work, splits, "bf16", warmup + steps)
    eager = PromptraySide(work, splits, "bf16", warmup + steps)
    eager.engine.model.lm.set_attn_implementation("eager")
    peft = PeftSide(sdpa)

    def math_step():
        with sdpa_kernel(SDPBackend.MATH):
            return math_side.step()

    sides = {"promptray bf16, sdpa (as loaded)": sdpa.step, "promptray bf16, sdpa math backend": math_step,
             "promptray bf16, eager attention": eager.step, "peft fp32": peft.step}
    for f in sides.values():
        for _ in range(warmup):
            f()
    times = {k: [] for k in sides}
    toks = {k: 0 for k in sides}
    names = list(sides)
    bar = tqdm(total=steps * len(sides), desc="attention variants", unit="step", disable=not progress)
    for r in range(-(-steps // block)):
        n_here = min(block, steps - r * block)
        for name in names[r % len(names):] + names[:r % len(names)]:
            for _ in range(n_here):
                t0 = time.perf_counter()
                _, n = sides[name]()
                times[name].append(time.perf_counter() - t0)
                toks[name] += n
                bar.update(1)
    bar.close()
    out = {k: {"tokens_per_s": round(toks[k] / sum(v), 1), "s_per_step_median": round(statistics.median(v), 4)}
           for k, v in times.items()}
    for k in out:
        out[k]["vs_peft_fp32"] = round(out[k]["tokens_per_s"] / out["peft fp32"]["tokens_per_s"], 2)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer steps")
    a = ap.parse_args(argv)
    prof_steps, steps, block, warmup = (1, 2, 1, 1) if a.quick else (4, 15, 5, 2)
    mach = machine()
    work = Path(tempfile.mkdtemp(prefix="promptray_profile_"))
    try:
        splits = sentiment_splits(work / "data")
        sides = {"promptray bf16": PromptraySide(work, splits, "bf16", 50),
                 "promptray fp32": PromptraySide(work, splits, "fp32", 50)}
        sides["peft fp32"] = PeftSide(sides["promptray fp32"])
        for s in sides.values():
            for _ in range(warmup):
                s.step()
        profiles = {}
        for name, s in sides.items():
            print(f"profiling {name} ({prof_steps} steps)")
            profiles[name] = profile_side(s.step, prof_steps)
        over = overheads(sides["promptray bf16"])
        del sides
        attention = attention_variants(work, splits, steps, block, warmup, progress=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"benchmark": "train_profile",
              "settings": {"model": "smollm2-135m", "batch": 8, "virtual_tokens": 20, "warmup_steps": warmup,
                           "profiled_steps_per_side": prof_steps, "attention_variant_steps": steps,
                           "block": block, "quick": a.quick,
                           "note": "profiler shares are of self CPU time; profiled s/step includes profiler "
                                   "overhead. Attention variants are timed interleaved in one process."},
              "machine": {**mach, "load_average_1_5_15min_at_end": [round(x, 2) for x in os.getloadavg()]},
              "profile": profiles, "promptray_overheads": over, "attention_variants_bf16": attention}
    path = write_result("train_profile", result)
    print(table([[n, p["s_per_step_profiled"], p["matmul"], p["attention_forward"], p["attention_backward"],
                  p["softmax_nll"], p["other"]] for n, p in profiles.items()],
                ["side", "s/step (profiled)", "matmul", "attn fwd", "attn bwd", "softmax+nll", "other"]))
    print(table([[k, v["tokens_per_s"], v["s_per_step_median"], f"{v['vs_peft_fp32']}x"] for k, v in attention.items()],
                ["side", "tokens/s", "s/step median", "vs PEFT fp32"]))
    print("promptray overheads:", over)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()

"""Decoding-step time of smollm2-135m in bf16 on the CPU: transformers' SDPA vs promptray's decode attention.

    python -m benchmarks.decode_attention [--steps 30] [--rounds 3] [--threads 1]

One decoding step = one forward of one new token per row over a KV cache (what the serving scheduler runs
per step). Shapes: rows B x cache slots T, "padded" (row 0 left-padded over half its slots, so every batch
has an attention mask: SDPA packs the query heads per key/value head) and "unpadded" (all rows full, no mask:
SDPA repeats keys and values per query head). Sides: the model's attention implementation "sdpa" and
`platform.model.attention.DECODE_ATTENTION` (grouped matmuls for one query on the CPU), alternated round by
round on the same model; per shape the median ms per step of each side and their ratio.
Result: results/decode_attention.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from benchmarks.common import MODEL, machine, table, write_result

SHAPES = [(1, 60, False), (1, 185, False), (8, 120, False), (14, 80, True), (14, 185, True)]  # (B, T, padded)


def step_ms(lm, B: int, T: int, padded: bool, steps: int) -> float:
    """Mean ms per decoding step over `steps` steps after a prompt pass of B rows x T tokens."""
    import torch

    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        ids = torch.randint(0, 1000, (B, T), generator=g)  # (B, T)
        mask = torch.ones(B, T, dtype=torch.long)
        if padded:
            mask[0, :T // 2] = 0
        out = lm(input_ids=ids, attention_mask=mask, use_cache=True)
        past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1)  # (B,)
        t0 = time.perf_counter()
        for s in range(steps):
            mask = torch.cat([mask, torch.ones(B, 1, dtype=torch.long)], 1)  # (B, T + s + 1)
            out = lm(input_ids=nxt[:, None], attention_mask=mask, position_ids=torch.full((B, 1), T + s),
                     past_key_values=past, use_cache=True)
            past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1)
        return (time.perf_counter() - t0) / steps * 1000


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30, help="decoding steps per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per side")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    a = ap.parse_args(argv)
    import torch

    from promptray.platform.model.attention import register_decode_attention
    from promptray.platform.model.hub import load_base_model

    torch.set_num_threads(a.threads)
    lm = load_base_model(MODEL)[0].to(torch.bfloat16).eval()
    sides = ("sdpa", register_decode_attention())
    times = {(shape, side): [] for shape in SHAPES for side in sides}
    load0 = os.getloadavg()
    for r in range(a.rounds):
        for side in (sides if r % 2 == 0 else sides[::-1]):
            lm.set_attn_implementation(side)
            for shape in SHAPES:
                times[shape, side].append(step_ms(lm, *shape, a.steps))
    rows = []
    for B, T, padded in SHAPES:
        med = [statistics.median(times[(B, T, padded), s]) for s in sides]
        rows.append({"rows": B, "cache_slots": T, "padded": padded, "sdpa_ms_per_step": round(med[0], 2),
                     "decode_attention_ms_per_step": round(med[1], 2), "speedup": round(med[0] / med[1], 3)})
    result = {"benchmark": "decode_attention", "machine": machine(), "model": MODEL, "dtype": "bfloat16",
              "threads": a.threads, "steps": a.steps, "rounds": a.rounds, "rows": rows,
              "load_average_1_5_15min": {"start": [round(x, 2) for x in load0],
                                         "end": [round(x, 2) for x in os.getloadavg()]}}
    print(table([[r["rows"], r["cache_slots"], r["padded"], r["sdpa_ms_per_step"],
                  r["decode_attention_ms_per_step"], r["speedup"]] for r in rows],
                ["rows", "slots", "padded", "sdpa ms/step", "decode attn ms/step", "speedup"]))
    print(f"wrote {write_result('decode_attention', result)}")
    return result


if __name__ == "__main__":
    main()

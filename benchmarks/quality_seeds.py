"""bf16 vs fp32 prompt tuning over several seeds: the mean held-out accuracy of each precision, their paired
difference with its standard error, and the validation losses, from the per-seed `benchmarks.quality` results.

One seed's accuracy on 400 test examples moves by a few points with any change of rounding (binomial
standard error alone is ~1.7 points at 87%), so the precision comparison is read from several seeds:

    for s in 1 2 3; do python -m benchmarks.quality --variants promptray_bf16 promptray_fp32 --seed $s \\
        --out quality_packed_seed$s; done
    python -m benchmarks.quality_seeds --glob 'quality_packed_seed*.json' --out quality_seeds

`--no-ranking` on the quality runs skips the label-ranking metric (about 40% of a pair's time); the ranking
summary then covers only the seeds that have it.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Optional

from benchmarks.common import RESULTS, table, write_result

SIDES = ("promptray_bf16", "promptray_fp32")


def seed_row(path: Path, replace: Optional[dict[int, Path]] = None) -> Optional[dict]:
    """One result file's seed, commit and both sides' accuracies and best validation losses (None if partial).
    `replace`: seed -> a later file whose sides (e.g. bf16 rerun with newer code) replace this file's."""
    data = json.loads(path.read_text())
    res = dict(data.get("results", {}))
    newer = (replace or {}).get(data["settings"]["seed"])
    if newer is not None:
        later = json.loads(newer.read_text())
        res.update({k: v for k, v in later["results"].items() if k in SIDES})
    if not all(side in res for side in SIDES):
        return None
    row = {"file": path.name, "seed": data["settings"]["seed"], "git_commit": data["machine"].get("git_commit")}
    if newer is not None:
        row.update(replaced_by=newer.name, replaced_sides=sorted(k for k in later["results"] if k in SIDES),
                   replaced_commit=later["machine"].get("git_commit"))
    for side in SIDES:
        short = side.removeprefix("promptray_")
        row[f"{short}_generation"] = res[side]["generation_accuracy"]
        row[f"{short}_ranking"] = res[side]["label_ranking_accuracy"]
        row[f"{short}_val_loss"] = res[side]["training"]["best_val_loss"]
    return row


def mean_sd(values: list[float]) -> dict:
    sd = statistics.stdev(values) if len(values) > 1 else None
    return {"mean": round(statistics.fmean(values), 5), "sd": None if sd is None else round(sd, 5),
            "standard_error": None if sd is None else round(sd / math.sqrt(len(values)), 5), "n": len(values)}


def summarize(rows: list[dict]) -> dict:
    out = {}
    for metric in ("generation", "ranking", "val_loss"):
        have = [r for r in rows if r[f"bf16_{metric}"] is not None and r[f"fp32_{metric}"] is not None]
        if not have:  # label ranking: only seeds run without --no-ranking
            continue
        bf16, fp32 = [r[f"bf16_{metric}"] for r in have], [r[f"fp32_{metric}"] for r in have]
        out[metric] = {"bf16": mean_sd(bf16), "fp32": mean_sd(fp32),
                       "bf16_minus_fp32_paired": mean_sd([a - b for a, b in zip(bf16, fp32)])}
    gap = out["generation"]["bf16_minus_fp32_paired"]
    out["target"] = {"bf16_within_one_point_of_fp32": "mean generation accuracy of bf16 >= fp32's - 0.01",
                     "met": gap["mean"] >= -0.01}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--glob", default="quality_packed_seed*.json", help="result files under benchmarks/results/")
    ap.add_argument("--out", default="quality_seeds", help="results file name under benchmarks/results/ (no .json)")
    ap.add_argument("--replace", help="result files whose sides replace those of the same seed (a rerun of one "
                                      "side with newer code), e.g. 'quality_eager_attention_seed*.json'")
    args = ap.parse_args(argv)
    replace = {json.loads(p.read_text())["settings"]["seed"]: p
               for p in sorted(RESULTS.glob(args.replace))} if args.replace else {}
    rows = [r for r in (seed_row(p, replace) for p in sorted(RESULTS.glob(args.glob))) if r is not None]
    if not rows:
        raise SystemExit(f"no complete results match benchmarks/results/{args.glob}")
    result = {"benchmark": "quality_seeds", "files": [r["file"] for r in rows], "per_seed": rows,
              "summary": summarize(rows)}
    print(table([[r["seed"], f"{r['bf16_generation']:.1%}", f"{r['fp32_generation']:.1%}",
                  r["bf16_val_loss"], r["fp32_val_loss"], (r["git_commit"] or "")[:7],
                  (r.get("replaced_commit") or "")[:7]] for r in rows],
                ["seed", "bf16 acc", "fp32 acc", "bf16 val loss", "fp32 val loss", "commit", "replaced by commit"]))
    s = result["summary"]
    print(f"bf16 - fp32 generation accuracy (paired, mean over {len(rows)} seeds): "
          f"{s['generation']['bf16_minus_fp32_paired']['mean']:+.1%} "
          f"(standard error {s['generation']['bf16_minus_fp32_paired']['standard_error'] or 0:.1%}); "
          f"target met: {s['target']['met']}")
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()

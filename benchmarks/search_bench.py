"""Search vs fixed prompts at the same compute: the demo's movie-review sentiment task on smollm2-135m.

The search (`promptray.jobs.search`, val_accuracy objective, ASHA) tries total_virtual_tokens in
{5, 10, 20, 50, 100} and lr log-uniform in [3e-3, 1e-1]; its compute is the optimizer steps its trials
actually ran (ASHA stops some early). The baselines are the fixed 20-token and 100-token prompts of the
demo's config, each trained for that same number of steps. All variants: held-out test accuracy (greedy,
normalized exact match of the label), the demo's fixed split.

    python -m benchmarks.search_bench [--quick] [--work-dir DIR] [--num-cpus N]

--quick: 10-step trials, 2 counts, 40 test examples (a smoke check; the numbers mean little).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from promptray.platform.config import load_config
from promptray.platform.demo import accuracy, sentiment_config
from promptray.platform.generation import GenerationParams
from promptray.platform.inference import load_inference_engine, prepare
from promptray.platform.trainer import train

from benchmarks.common import MODEL, machine, sentiment_splits, table, write_result


def search_raw(out: Path, data: dict, steps: int, counts: list[int], samples: int) -> dict:
    raw = sentiment_config(out, data, steps, MODEL)
    raw["name"] = "search_bench"
    raw["model"]["nemo_path"] = str(out / "search_table")
    raw["search"] = {"tasks": {"sentiment": {"total_virtual_tokens": counts}}, "lr": {"min": 3e-3, "max": 1e-1},
                     "metric": "val_accuracy", "tokens_to_generate": 4, "num_samples": samples,
                     "max_concurrent_trials": 1, "grace_period": 1, "reduction_factor": 2, "seed": 0}
    return raw


def held_out_accuracy(table_uri: str, test_file: Path, n_test: int) -> float:
    engine = load_inference_engine(table_uri, precision="bf16")
    params = GenerationParams(tokens_to_generate=4, greedy=True)
    return accuracy(engine, prepare(engine, [test_file], 4)[:n_test], params)


def run_search_variant(out: Path, data: dict, steps: int, counts: list[int], samples: int) -> dict:
    from promptray.jobs.search import prepare_search_config, run_search

    payload = run_search(prepare_search_config(search_raw(out, data, steps, counts, samples)))
    trials = json.loads(Path(payload["trials_csv"]).with_suffix(".json").read_text())
    used = sum(t["last_step"] for t in trials if t["status"] == "ok")
    return {"payload": payload, "steps_used": used}


def run_fixed(out: Path, data: dict, tokens: int, steps: int) -> str:
    raw = sentiment_config(out / f"fixed{tokens}", data, steps, MODEL)
    t = raw["model"]["task_templates"][0]
    raw["model"]["task_templates"] = [{**t, "total_virtual_tokens": tokens, "virtual_token_splits": [tokens]}]
    train(load_config(raw), progress=False)
    return str(out / f"fixed{tokens}" / "prompt_table")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--work-dir", type=Path)
    p.add_argument("--num-cpus", type=int)
    args = p.parse_args()
    steps, counts, samples, n_test = (10, [5, 20], 1, 40) if args.quick else (100, [5, 10, 20, 50, 100], 2, 400)
    out = args.work_dir or Path(tempfile.mkdtemp(prefix="search-bench-"))
    data = sentiment_splits(out / "data", n_test)
    import ray

    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False)
    search = run_search_variant(out, data, steps, counts, samples)
    budget = search["steps_used"]
    rows = [["search", search["payload"]["best"]["sentiment"]["config"], budget,
             held_out_accuracy(search["payload"]["table"], data["test"], n_test)]]
    for tokens in (20, 100):
        rows.append([f"fixed {tokens}", {"sentiment.total_virtual_tokens": tokens}, budget,
                     held_out_accuracy(run_fixed(out, data, tokens, budget), data["test"], n_test)])
    print(table(rows, ["variant", "config", "optimizer steps", "test accuracy"]))
    write_result("search_bench", {"machine": machine(), "quick": args.quick, "rows": rows})


if __name__ == "__main__":
    main()

"""Search vs fixed prompts at the same compute: the demo's movie-review sentiment task (or, with `--task
question_type`, its six-class TREC question-type task) on smollm2-135m.

The search (`promptray.jobs.search`, val_accuracy objective, ASHA) tries total_virtual_tokens in `--counts`
and lr log-uniform in [3e-3, 1e-1]; its compute is the optimizer steps its trials actually ran (ASHA stops
some early; its validation passes are not counted). The baselines are the fixed 20-token and 100-token
prompts of the demo's config (lr 3e-2), each trained for that same number of steps. All variants: held-out
test accuracy (greedy, normalized exact match of the label), the demo's fixed split.

    python -m benchmarks.search_bench [--quick] [--work-dir DIR] [--num-cpus N]
                                      [--steps N] [--counts 5,20,50,100] [--samples N] [--n-val N] [--n-test N]

Default (sized for about 20 minutes on 2 CPUs; 25.5 minutes measured while other work shared them): 32-step
trials validated every 8 steps, counts {5, 20, 50, 100}, one sample each, the first 80 validation
examples (the search's accuracy at every validation is the costly part), 200 test examples. The first
budget (100-step trials, counts {5, 10, 20, 50, 100}, two samples each, 200 validation and 400 test
examples) is `--steps 100 --counts 5,10,20,50,100 --samples 2 --n-val 200 --n-test 400` (well over an hour
on 2 CPUs).
--quick: 10-step trials, 2 counts, 40 validation and 40 test examples (a smoke check; the numbers mean little).
--budget N: the budget search instead (search.budget_steps N: one packed trial, successive halving, the
objective label ranking on --n-val records); the fixed prompts train N steps each. --lr MIN,MAX,
--reduction-factor, --grace-fraction, --brackets set the search's plan; --fixed none runs the search alone.
--task question_type: the demo's TREC question types (abbreviation, description, entity, person, location,
number; the demo's fixed split: 200 validation, 400 test) as a prompt-tuning task of one 20-token text-
initialised block (`QUESTION_TEMPLATE`, `QUESTION_INIT`), lr 3e-2 as sentiment's; the default there is
fixed 20 only (`--fixed 20,100` adds others).
--fixed-steps N: the fixed prompts train N steps instead of the search's; --no-search (with --fixed-steps):
the fixed prompts alone (e.g. at the steps the search's published candidate trained).
--n-val over 200 (the demo's validation split) or --n-test over 400: the extra validation records come from
the start of the train split, the extra test records before the validation split (the split moves on), so
every side of one run trains on the same, smaller, train split.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from benchmarks.common import MODEL, machine, read_jsonl, table, write_result
from promptray.platform.config.schema import load_config
from promptray.platform.data.demo_data import movie_sentiment, trec_questions, write_splits
from promptray.platform.demo import MAX_ANSWER_TOKENS, N_TEST_SPLIT, N_VAL, accuracy, sentiment_config
from promptray.platform.generation.decode import GenerationParams
from promptray.platform.generation.inference import load_inference_engine, prepare
from promptray.platform.train.trainer import train

LR = {"min": 3e-3, "max": 1e-1}
TASKS = ("sentiment", "question_type")
# the TREC task for prompt tuning: one block of virtual tokens before the question, as sentiment's
QUESTION_TEMPLATE = {"taskname": "question_type",
                     "prompt_template": "<|VIRTUAL_PROMPT_0|> Question: {question}\nType: {label}",
                     "total_virtual_tokens": 20, "virtual_token_splits": [20], "truncate_field": "question",
                     "answer_only_loss": True, "answer_field": "label"}
QUESTION_INIT = "Classify the type of this question as abbreviation, description, entity, person, location or number"


def task_config(task: str, out: Path, data: dict, steps: int) -> dict:
    """The training config of `task` (the demo's sentiment run, or the same settings on the TREC task)."""
    raw = sentiment_config(out, data, steps, MODEL)
    if task == "question_type":
        m = raw["model"]
        m.update({"new_tasks": [task], "task_templates": [dict(QUESTION_TEMPLATE)]})
        m["prompt_tuning"]["new_prompt_init_text"] = [QUESTION_INIT]
        raw["exp_manager"] = {"explicit_log_dir": str(out / task)}
    return raw


def task_splits(task: str, out_dir: Path, n_test: int, n_val: int = N_VAL) -> dict:
    """The demo's fixed split of `task`: 400 test examples (or n_test when more), then 200 validation examples
    (or n_val when more: the extra ones come from the start of the train split, so the test split is the same and
    every side of a benchmark trains on the same, smaller, train split)."""
    rows = trec_questions() if task == "question_type" else movie_sentiment()
    name = "questions" if task == "question_type" else "sentiment"
    return write_splits(name, rows, out_dir, n_val=max(n_val, N_VAL), n_test=max(n_test, N_TEST_SPLIT))


def search_raw(out: Path, data: dict, steps: int, counts: list[int], samples: int,
               fixed_lr: bool = False, budget: int | None = None, n_val: int | None = None,
               train_best: bool = False, task: str = "sentiment", plan: dict | None = None) -> dict:
    """The search's config; `plan`: search keys that override the defaults below (lr, reduction_factor,
    grace_fraction, brackets)."""
    raw = task_config(task, out, data, steps)
    raw["name"] = "search_bench"
    raw["model"]["nemo_path"] = str(out / "search_table")
    raw["search"] = {"tasks": {task: {"total_virtual_tokens": counts}},
                     "metric": "val_accuracy", "max_new_tokens": 4, "num_samples": samples,
                     "max_concurrent_trials": 1, "grace_period": 1, "reduction_factor": 2, "seed": 0}
    if not fixed_lr:  # else every trial uses the config's lr (model.optim.lr 3e-2), like the fixed prompts
        raw["search"]["lr"] = LR
    if budget:  # packed successive halving within `budget` optimizer steps, validated at the rungs only
        raw["search"].update({"budget_steps": budget, "val_samples": n_val, "train_best": train_best})
        raw["trainer"]["val_check_interval"] = 1.0
    raw["search"].update(plan or {})
    return raw


def held_out_accuracy(table_uri: str, test_file: Path, n_test: int) -> float:
    engine = load_inference_engine(table_uri, precision="bf16")
    params = GenerationParams(max_new_tokens=MAX_ANSWER_TOKENS, greedy=True)
    return accuracy(engine, prepare(engine, [test_file], MAX_ANSWER_TOKENS)[:n_test], params)


def run_search_variant(out: Path, data: dict, steps: int, counts: list[int], samples: int,
                       fixed_lr: bool = False, budget: int | None = None, n_val: int | None = None,
                       train_best: bool = False, task: str = "sentiment", plan: dict | None = None) -> dict:
    from promptray.jobs.search import prepare_search_config, run_search

    payload = run_search(prepare_search_config(search_raw(out, data, steps, counts, samples, fixed_lr, budget,
                                                          n_val, train_best, task, plan)))
    trials = json.loads(Path(payload["trials_csv"]).with_suffix(".json").read_text())
    used = sum(t["last_step"] for t in trials if t["status"] == "ok")
    return {"payload": payload, "steps_used": used, "trials": trials}


def run_fixed(out: Path, data: dict, tokens: int, steps: int, task: str = "sentiment") -> str:
    raw = task_config(task, out / f"fixed{tokens}", data, steps)
    t = raw["model"]["task_templates"][0]
    raw["model"]["task_templates"] = [{**t, "total_virtual_tokens": tokens, "virtual_token_splits": [tokens]}]
    train(load_config(raw), progress=False)
    return str(out / f"fixed{tokens}" / "prompt_table")


def cut_validation(data: dict, n_val: int) -> dict:
    """The demo's validation split cut to its first n_val examples (the search validates on it)."""
    rows = read_jsonl(data["validation"])[:n_val]
    path = Path(data["validation"]).with_name(f"{Path(data['validation']).stem}_{n_val}.jsonl")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {**data, "validation": path}


def trial_summary(trials: list[dict], task: str = "sentiment") -> list[dict]:
    return [{"total_virtual_tokens": t.get(f"config/{task}.total_virtual_tokens"),
             "lr": round(t["config/lr"], 5) if "config/lr" in t else None, "status": t["status"],
             "best_val_accuracy": t.get("val_accuracy"), "validations": t.get("iterations"),
             "steps": t.get("last_step"), "state": t.get("state")} for t in trials]


def plan_options(args) -> dict:
    """The search keys the command line sets (--lr, --reduction-factor, --grace-fraction, --brackets)."""
    plan: dict = {}
    if args.lr:
        low, high = (float(x) for x in args.lr.split(","))
        plan["lr"] = {"min": low, "max": high}
    for key in ("reduction_factor", "grace_fraction", "brackets"):
        if getattr(args, key) is not None:
            plan[key] = getattr(args, key)
    return plan


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--work-dir", type=Path)
    p.add_argument("--num-cpus", type=int)
    p.add_argument("--steps", type=int, help="steps per trial (default 32; --quick 10)")
    p.add_argument("--counts", help="comma-separated virtual-token counts (default 5,20,50,100; --quick 5,20)")
    p.add_argument("--samples", type=int, help="samples per count (default 1)")
    p.add_argument("--n-val", type=int, help="validation examples (default 80; --quick 40); over 200, the extra "
                   "ones come from the train split (every side trains on the rest)")
    p.add_argument("--n-test", type=int, help="test examples (default 200; --quick 40)")
    p.add_argument("--fixed-lr", action="store_true",
                   help="search the token count only (lr 3e-2, as the fixed prompts)")
    p.add_argument("--budget", type=int, help="search.budget_steps: a packed successive-halving search within this "
                   "many optimizer steps over all candidates (validation: --n-val records, label ranking)")
    p.add_argument("--train-best", action="store_true", help="with --budget: search.train_best (the best "
                   "candidate trains on alone in a last rung)")
    p.add_argument("--task", choices=TASKS, default="sentiment", help="the demo's sentiment task (default) or its "
                   "TREC question-type task (6 classes)")
    p.add_argument("--fixed", help="comma-separated token counts of the fixed prompts (default 20,100 for "
                   "sentiment, 20 for question_type; none: the search only)")
    p.add_argument("--lr", help="MIN,MAX: the searched learning-rate range (default 3e-3,0.1)")
    p.add_argument("--reduction-factor", type=float, help="search.reduction_factor (default 2)")
    p.add_argument("--grace-fraction", type=float, help="with --budget: search.grace_fraction (default 0.25)")
    p.add_argument("--brackets", type=int, help="with --budget: search.brackets (default 1)")
    p.add_argument("--fixed-steps", type=int, help="optimizer steps of each fixed prompt (default: the search's "
                   "steps used); with --no-search, required")
    p.add_argument("--no-search", action="store_true", help="the fixed prompts only, --fixed-steps steps each")
    p.add_argument("--out", default="search_bench", help="results file name under benchmarks/results/ (no .json)")
    args = p.parse_args(argv)
    if args.no_search and not args.fixed_steps:
        p.error("--no-search: give --fixed-steps N (the steps each fixed prompt trains)")
    steps, counts, samples, n_val, n_test = (10, [5, 20], 1, 40, 40) if args.quick else (32, [5, 20, 50, 100], 1,
                                                                                      80, 200)
    steps, samples = args.steps or steps, args.samples or samples
    counts = [int(c) for c in args.counts.split(",")] if args.counts else counts
    n_val, n_test = args.n_val or n_val, args.n_test or n_test
    out = args.work_dir or Path(tempfile.mkdtemp(prefix="search-bench-"))
    task = args.task
    fixed = [] if args.fixed == "none" else [int(c) for c in args.fixed.split(",")] if args.fixed else (
        [20, 100] if task == "sentiment" else [20])
    data = cut_validation(task_splits(task, out / "data", n_test, n_val), n_val)
    plan = plan_options(args)
    import ray

    info = machine()  # its load average is the one at the start
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False)
    rows, seconds, search = [], {}, {"trials": []}
    if not args.no_search:
        search = run_search_variant(out, data, steps, counts, samples, args.fixed_lr, args.budget, n_val,
                                    args.train_best, task, plan)
        search_s = time.perf_counter() - t0
        rows = [["search", search["payload"]["best"][task]["config"], search["steps_used"],
                 held_out_accuracy(search["payload"]["table"], data["test"], n_test)]]
        seconds = {"search": round(search_s, 1),
                   "search_test_accuracy": round(time.perf_counter() - t0 - search_s, 1),
                   "candidates_per_hour": round(len(search["trials"]) * 3600 / search_s, 1)}
    budget = args.fixed_steps or search["steps_used"]
    for tokens in fixed:
        t1 = time.perf_counter()
        rows.append([f"fixed {tokens}", {f"{task}.total_virtual_tokens": tokens, "lr": 3e-2}, budget,
                     held_out_accuracy(run_fixed(out, data, tokens, budget, task), data["test"], n_test)])
        seconds[f"fixed {tokens} (train + test accuracy)"] = round(time.perf_counter() - t1, 1)
    seconds["total"] = round(time.perf_counter() - t0, 1)
    ray.shutdown()
    print(table(rows, ["variant", "config", "optimizer steps", "test accuracy"]))
    settings = {"task": task, "model": MODEL, "steps_per_trial": steps, "val_check_interval": max(1, steps // 4),
                "counts": counts, "samples_per_count": samples, "lr": 3e-2 if args.fixed_lr else plan.get("lr", LR),
                "n_validation": n_val, "n_test": n_test,
                "metric": "val_accuracy (greedy, 4 tokens)",
                "asha": {"grace_period": 1, "reduction_factor": plan.get("reduction_factor", 2)},
                "max_concurrent_trials": 1, "ray_num_cpus": args.num_cpus or os.cpu_count(),
                "budget_steps": args.budget, "train_best": args.train_best, "search": not args.no_search,
                "fixed_steps": budget,
                "budget_note": None if args.quick else (
                    "reduced from the issue's first budget (100-step trials, counts 5,10,20,50,100 x 2 samples, "
                    "200 validation / 400 test examples) to fit about 20 minutes on 2 CPUs shared with other "
                    "work; rerun that with --steps 100 --counts 5,10,20,50,100 --samples 2 --n-val 200 "
                    "--n-test 400")}
    if args.budget:  # the packed search: no per-trial steps, no ASHA; rungs from the plan, label ranking
        settings.update({"steps_per_trial": None, "val_check_interval": "the plan's rungs", "asha": None,
                         "metric": "val_accuracy (label ranking of the task's labels)",
                         "successive_halving": {"reduction_factor": plan.get("reduction_factor", 2),
                                                "grace_fraction": plan.get("grace_fraction", 0.25),
                                                "brackets": plan.get("brackets", 1)},
                         "shared_forward": False, "lr_sampling": "Latin hypercube over counts x samples strata",
                         "budget_note": None})
    write_result(args.out, {"benchmark": "search_bench", "quick": args.quick, "settings": settings,
                                  "machine": info, "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
                                  "rows": rows, "trials": trial_summary(search["trials"], task),
                                  "seconds": seconds})


if __name__ == "__main__":
    main()

"""Candidates trained per hour: one Ray Tune trial per candidate (the search before issue 16) vs packed
candidates (a budget search), the same candidates, steps and validations, in one run.

Both sides run `promptray.jobs.search.run_search` on the demo's sentiment task (smollm2-135m, bf16, batch 8)
with the same candidates: token counts `--counts` x `--samples` learning rates, each trained `--steps`
optimizer steps and validated every `--every` steps by the val_accuracy objective on `--n-val` validation
records, one trial at a time, nobody stopped early:

- today: the search as it was when issue 16 was filed: one Tune trial per candidate (as `trials` below),
  validated by greedy exact match of up to 4 generated tokens (`search.label_ranking: false`; before issue
  16 that was the only val_accuracy objective), each trial on 1 CPU (then the default of
  `search.cpus_per_trial`: one trial at a time left the other cores idle).
- today_code (with `--today-python PY`): the same search run by the code issue 16 was filed against, not
  emulated: PY is a Python whose promptray is a checkout of a103777 (`git worktree add --detach DIR a103777`,
  a copy of the venv, `pip install -e DIR --no-deps`), in its own local Ray started first (its trials run
  that Python), the config without the keys that code lacks (val_samples, label_ranking; max_new_tokens under
  its old name tokens_to_generate; the validation file is cut to --n-val records, so it validates on the same
  records).
- today_all_cpus: the same with `search.cpus_per_trial` = the machine's CPUs, which a user of that search
  could have set by hand: what the new default alone buys, and the fair base for what packing buys.
- trials (and the packed sides): `search.cpus_per_trial` unset, its default now: each trial its share of the
  cluster's CPUs (all of them, one trial at a time).
- trials: the search without a budget, one Tune trial (own process, own model load and data read) per
  candidate; ASHA's grace period is the trial's number of validations, so it stops no trial before its end.
  Each trial also computes the validation loss at every validation, as a training run does.
- packed: `search.budget_steps` = candidates x steps with `grace_fraction: 1` (one rung: no cut), so one
  Tune trial trains every candidate in one process (platform/train/pack.py) and validates it at the same
  steps by the objective alone; each candidate its own forward passes (`search.shared_forward: false`).
- packed_shared: the same with `search.shared_forward: true`: each micro-step one mixed-task forward pass
  over every candidate's rows.

Candidates per hour = candidates x 3600 / the search's wall time (run_search, Ray already started). The
ratios are given over `today` (what issue 16's target compares with) and over `trials` (label ranking on
both sides: what packing itself buys). Other work on the machine slows every side; the load average at the
start and at the end is recorded.

    python -m benchmarks.search_throughput [--quick] [--counts 5,20,50,100] [--samples 2] [--steps 32]
                                           [--every 8] [--n-val 80] [--num-cpus N] [--out NAME]
                                           [--today-python PY] [--sides packed,trials,...] [--repeats N]

`--sides` picks the sides run in this process's Ray (`none`: today_code alone); `--repeats N` runs them N
times, interleaved with today_code (first in odd-numbered runs, counting from one, last in the others): the
result's `sides` is then each side's run of median time (with every run's seconds), `ratios` are taken
between those, and `runs` / `ratios_per_run` hold every run.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine, table, write_result
from benchmarks.search_bench import cut_validation, search_raw, task_splits


def side_config(out: Path, data: dict, steps: int, every: int, counts: list[int], samples: int, n_val: int,
                packed: bool, shared: bool = False, ranking: bool = True, cpus: float | None = None) -> dict:
    """The search config of one side (the search_bench config: lr log-uniform in [3e-3, 0.1]); `cpus`:
    search.cpus_per_trial (None: its default)."""
    raw = search_raw(out, data, steps, counts, samples, n_val=n_val)
    raw["trainer"]["val_check_interval"] = every
    raw["search"].update({"val_samples": n_val, "label_ranking": ranking, "cpus_per_trial": cpus})
    if packed:
        raw["search"].update({"budget_steps": len(counts) * samples * steps, "grace_fraction": 1.0,
                              "shared_forward": shared})
    else:
        raw["search"]["grace_period"] = max(1, steps // every)  # ASHA's first rung is the trial's last report
    return raw


def run_side(out: Path, raw: dict) -> dict:
    from promptray.jobs.search import prepare_search_config, run_search

    t0 = time.perf_counter()
    payload = run_search(prepare_search_config(raw))
    seconds = time.perf_counter() - t0
    trials = json.loads(Path(payload["trials_csv"]).with_suffix(".json").read_text())
    return side_result(trials, seconds, payload.get("cpus_per_trial"))


def side_result(trials: list[dict], seconds: float, cpus: float | None) -> dict:
    """One side's row: its finished candidates, Tune trials, steps, validations and candidates per hour."""
    ok = [t for t in trials if t["status"] == "ok"]
    return {"seconds": round(seconds, 1), "candidates": len(ok), "tune_trials": len({t["trial_id"] for t in ok}),
            "optimizer_steps": sum(t["last_step"] for t in ok),
            "validations": sum(t.get("iterations") or 0 for t in ok), "cpus_per_trial": cpus,
            "candidates_per_hour": round(len(ok) * 3600 / seconds, 1)}


OLD_DRIVER = """
import json, sys, time
from pathlib import Path
import ray
from promptray.jobs.search import prepare_search_config, run_search
raw = json.loads(Path(sys.argv[1]).read_text())
ray.init(address="local", num_cpus=int(sys.argv[2]), include_dashboard=False)
t0 = time.perf_counter()
payload = run_search(prepare_search_config(raw))
seconds = time.perf_counter() - t0
trials = json.loads(Path(payload["trials_csv"]).with_suffix(".json").read_text())
print("TODAY_CODE " + json.dumps({"seconds": seconds, "trials": trials}))
ray.shutdown()
"""


def run_today_code(python: str, out: Path, raw: dict, cpus: int) -> dict:
    """The `today` side run by `python` (the code issue 16 was filed against) in its own local Ray."""
    import subprocess

    s = raw["search"]
    for key in ("val_samples", "label_ranking"):
        s.pop(key, None)
    s["tokens_to_generate"] = s.pop("max_new_tokens")
    path = out / "today_code.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(raw))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH")}
    proc = subprocess.run([python, "-c", OLD_DRIVER, str(path), str(cpus)], env=env, capture_output=True,
                          text=True, cwd=out, check=False)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("TODAY_CODE ")), None)
    if line is None:
        raise RuntimeError(f"--today-python {python}: the search failed: {proc.stderr[-2000:]}")
    res = json.loads(line.removeprefix("TODAY_CODE "))
    return side_result(res["trials"], res["seconds"], s.get("cpus_per_trial"))


SIDES = ("today", "today_all_cpus", "trials", "packed", "packed_shared")  # run in one local Ray, in this order


def ray_side_config(name: str, out: Path, data: dict, steps: int, every: int, counts: list[int], samples: int,
                    n_val: int, cpus: float) -> dict:
    """The search config of side `name`, one of SIDES (see the module docstring)."""
    packed, shared, ranking, side_cpus = {
        "today": (False, False, False, 1.0), "today_all_cpus": (False, False, False, cpus),
        "trials": (False, False, True, None), "packed": (True, False, True, None),
        "packed_shared": (True, True, True, None)}[name]
    return side_config(out / name, data, steps, every, counts, samples, n_val, packed, shared, ranking, side_cpus)


def run_round(args, out: Path, data: dict, settings: tuple, cpus: float, names: list[str],
              today_last: bool) -> dict:
    """One run of the chosen sides: today_code (its own Ray, none of this process's running) first or last,
    the others in one local Ray of this process. Returns {side: row} and the load average at the start."""
    steps, every, counts, samples, n_val = settings
    sides: dict = {"load_average_at_start": [round(x, 2) for x in os.getloadavg()]}

    def today_code() -> None:
        sides["today_code"] = run_today_code(args.today_python, out / "today_code", side_config(
            out / "today_code", data, steps, every, counts, samples, n_val, False, False, False, 1.0), int(cpus))
        print("today_code", sides["today_code"], flush=True)

    if args.today_python and not today_last:
        today_code()
    if names:
        import ray

        ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False)
        for name in names:
            sides[name] = run_side(out, ray_side_config(name, out, data, steps, every, counts, samples, n_val, cpus))
            print(name, sides[name], flush=True)
        ray.shutdown()
    if args.today_python and today_last:
        today_code()
    return sides


def ratios_of(rows: dict[str, dict]) -> dict[str, float]:
    """Candidates per hour of trials / packed / packed_shared over those of each base side present."""
    per_hour = {k: v["candidates_per_hour"] for k, v in rows.items()}
    return {f"{k} / {base}": round(per_hour[k] / per_hour[base], 2)
            for base in ("today_code", "today", "today_all_cpus", "trials") if base in per_hour
            for k in ("trials", "packed", "packed_shared") if k != base and k in per_hour}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2 counts x 1 sample, 4 steps, 16 validation records")
    p.add_argument("--counts", help="comma-separated token counts (default 5,20,50,100)")
    p.add_argument("--samples", type=int, help="learning rates per count (default 2)")
    p.add_argument("--steps", type=int, help="optimizer steps per candidate (default 32)")
    p.add_argument("--every", type=int, help="validate every N steps (default 8)")
    p.add_argument("--n-val", type=int, help="validation records (default 80)")
    p.add_argument("--num-cpus", type=int)
    p.add_argument("--today-python", help="a Python whose promptray is the code issue 16 was filed against "
                   "(a103777): adds the today_code side")
    p.add_argument("--sides", help="comma-separated sides run in this process's Ray, or none (default all: "
                   f"{','.join(SIDES)})")
    p.add_argument("--repeats", type=int, default=1, help="runs of every side, interleaved: today_code first in "
                   "odd runs, last in even ones (default 1)")
    p.add_argument("--work-dir", type=Path)
    p.add_argument("--out", default="search_throughput", help="results file name under benchmarks/results/")
    args = p.parse_args(argv)
    names = list(SIDES) if args.sides is None else [n for n in args.sides.split(",") if n and n != "none"]
    unknown = [n for n in names if n not in SIDES]
    if unknown:
        p.error(f"--sides: unknown {unknown}; choose from {','.join(SIDES)}, or none")
    if args.repeats < 1:
        p.error(f"--repeats: {args.repeats}; give 1 or more")
    if not names and not args.today_python:
        p.error("--sides none: nothing to run without --today-python")
    counts, samples, steps, every, n_val = ([5, 20], 1, 4, 2, 16) if args.quick else ([5, 20, 50, 100], 2, 32, 8, 80)
    counts = [int(c) for c in args.counts.split(",")] if args.counts else counts
    samples, steps = args.samples or samples, args.steps or steps
    every, n_val = args.every or every, args.n_val or n_val
    out = args.work_dir or Path(tempfile.mkdtemp(prefix="search-throughput-"))
    data = cut_validation(task_splits("sentiment", out / "data", 400), n_val)
    cpus = float(args.num_cpus or os.cpu_count() or 1)
    info = machine()
    runs = [run_round(args, out / f"run{i}", data, (steps, every, counts, samples, n_val), cpus, names,
                      today_last=i % 2 == 1) for i in range(args.repeats)]
    side_names = [k for k in runs[0] if k != "load_average_at_start"]
    sides = {k: runs[0][k] if len(runs) == 1 else median_row([r[k] for r in runs]) for k in side_names}
    ratios = ratios_of(sides)
    per_run = [ratios_of({k: r[k] for k in side_names}) for r in runs]
    print(table([[k, v["candidates"], v["tune_trials"], v["cpus_per_trial"], v["optimizer_steps"], v["seconds"],
                  v["candidates_per_hour"]] for k, v in sides.items()],
                ["side", "candidates", "Tune trials", "CPUs per trial", "optimizer steps",
                 "seconds" + (" (median)" if len(runs) > 1 else ""), "candidates / hour"]))
    print(", ".join(f"{k}: {v}x" for k, v in ratios.items()))
    if len(runs) > 1:
        for i, r in enumerate(per_run):
            print(f"run {i}: " + ", ".join(f"{k}: {v}x" for k, v in r.items()))
    settings = {"task": "sentiment", "counts": counts, "samples_per_count": samples, "steps_per_candidate": steps,
                "val_check_interval": every, "n_validation": n_val,
                "objective": "val_accuracy (today: greedy exact match of 4 tokens; the others: label ranking)",
                "lr": {"min": 3e-3, "max": 1e-1}, "max_concurrent_trials": 1,
                "cpus_per_trial": {"today": 1, "today_code": 1, "today_all_cpus": cpus, "others": "default (auto)"},
                "today_python": args.today_python, "repeats": args.repeats,
                "ray_num_cpus": args.num_cpus or os.cpu_count()}
    write_result(args.out, {"benchmark": "search_throughput", "quick": args.quick, "settings": settings,
                            "machine": info, "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
                            "sides": sides, "ratios": ratios,
                            **({"runs": runs, "ratios_per_run": per_run} if len(runs) > 1 else {})})


def median_row(rows: list[dict]) -> dict:
    """A side over several runs: the run of median wall time (the lower middle one for an even count), with
    every run's seconds."""
    ordered = sorted(rows, key=lambda r: r["seconds"])
    return {**ordered[(len(ordered) - 1) // 2], "seconds_per_run": [r["seconds"] for r in rows]}


if __name__ == "__main__":
    main()

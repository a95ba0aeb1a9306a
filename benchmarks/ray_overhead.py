"""Ray overhead: the engine alone vs the same config as a 1-worker Ray Train job, and submission latency.

Same config on every side: the demo's sentiment prompt tuning on smollm2-135m (bf16, batch 8, seed 1234,
20 virtual tokens, text init), `--steps` optimizer steps, a metrics record every step (the job prints a
PROMPTRAY_METRICS line per record), validation once at the end on 2 batches.

Sides:
- engine: `promptray.platform.train.trainer.train` in this process (torch uses all cores), run first and again
  last; the baseline is the mean of the two (the machine's load can change in between);
- ray job, CPU:2: `python -m promptray.jobs.train` submitted with the SDK to a local `ray start --head`
  cluster (2 CPUs, started by this script and stopped by PID), 1 worker with `ray.resources_per_worker:
  {CPU: 2}`;
- ray job, default resources: the same with Ray's default of 1 CPU per worker (Ray then sets
  OMP_NUM_THREADS=1 in the worker, so torch uses one thread: the cost of forgetting resources_per_worker).

tokens/s is the training loop's own figure (tokens of the optimizer steps / their time; model loading,
validation and Ray's start-up are not in it) and the ratio is Ray side / engine baseline. Latency: from the
`submit_tuning` call to the first PROMPTRAY_METRICS line in the job log (the SDK polls the log every 0.2 s),
so it includes runtime-env upload, the driver's start, the Ray Train worker group, loading the model and
the first step; wall: until the job's SUCCEEDED status.

    python -m benchmarks.ray_overhead [--quick] [--steps 20] [--no-default-resources]
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from pathlib import Path
from typing import Optional

from benchmarks.common import MODEL, machine, sentiment_splits, table, write_result

ENGINE, ENGINE_AFTER = "engine (in-process)", "engine (in-process), again after the Ray sides"
RAY_CPU2, RAY_DEFAULT = "ray job, 1 worker, CPU:2", "ray job, 1 worker, default CPU:1"
POLL_S = 0.2


def job_config(work: Path, splits: dict, steps: int) -> dict:
    from promptray.platform.demo import sentiment_config

    raw = sentiment_config(work, splits, steps, MODEL)
    raw["trainer"].update({"val_check_interval": steps, "limit_val_batches": 2, "log_every_n_steps": 1})
    return raw


def run_engine(raw: dict, work: Path, name: str) -> dict:
    from promptray.platform.config.schema import load_config
    from promptray.platform.train.trainer import train

    raw = copy.deepcopy(raw)
    raw["model"]["nemo_path"] = str(work / f"{name}_table")
    raw["exp_manager"]["exp_dir"] = str(work / name)
    t0 = time.perf_counter()
    result = train(load_config(raw), progress=False)
    return {"tokens_per_s": result.tokens_per_s, "wall_s": round(time.perf_counter() - t0, 2),
            "steps": result.steps, "final_train_loss": result.final_train_loss}


def _first_metrics_time(job, t0: float, timeout: float = 600.0) -> Optional[float]:
    """Seconds from t0 until the job log shows its first PROMPTRAY_METRICS line (None if it never does)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "PROMPTRAY_METRICS " in job.logs():
            return time.perf_counter() - t0
        if job.status().is_terminal:
            return None
        time.sleep(POLL_S)
    return None


def run_ray_job(client, raw: dict, work: Path, name: str, cpus: Optional[float]) -> dict:
    raw = copy.deepcopy(raw)
    raw["model"]["nemo_path"] = str(work / f"{name}_table")
    raw["exp_manager"]["exp_dir"] = str(work / name)
    raw["ray"] = {"num_workers": 1, **({"resources_per_worker": {"CPU": cpus}} if cpus else {})}
    t0 = time.perf_counter()
    job = client.submit_tuning(raw)
    submitted = time.perf_counter() - t0
    first = _first_metrics_time(job, t0)
    job.wait(show_progress=False, poll_s=POLL_S)
    wall = time.perf_counter() - t0
    metrics, result = job.metrics(), job.result()
    return {"job_id": job.id, "tokens_per_s": metrics[-1].tokens_per_s, "submit_call_s": round(submitted, 2),
            "submit_to_first_step_s": round(first, 2) if first else None, "wall_s": round(wall, 2),
            "steps": result.steps, "final_train_loss": metrics[-1].loss}


def run_ray_sides(raw: dict, work: Path, default_resources: bool) -> tuple[dict, dict]:
    from promptray.sdk import Client, LocalCluster

    t0 = time.perf_counter()
    cluster = LocalCluster(num_cpus=2).start()
    cluster_s = round(time.perf_counter() - t0, 2)
    try:
        client = Client(address=cluster.dashboard_url, auth_token=cluster.token)
        sides = {RAY_CPU2: run_ray_job(client, raw, work, "ray_cpu2", 2)}
        if default_resources:
            sides[RAY_DEFAULT] = run_ray_job(client, raw, work, "ray_default", None)
    finally:
        cluster.stop()
    return sides, {"ray_start_head_s": cluster_s}


def engine_baseline(sides: dict) -> float:
    return (sides[ENGINE]["tokens_per_s"] + sides[ENGINE_AFTER]["tokens_per_s"]) / 2


def summary_rows(sides: dict) -> list[list]:
    base = engine_baseline(sides)
    return [[name, round(s["tokens_per_s"], 1), f"{s['tokens_per_s'] / base:.3f}", s["wall_s"],
             s.get("submit_to_first_step_s", "-"), round(s["final_train_loss"], 4)] for name, s in sides.items()]


def run(steps: int = 20, default_resources: bool = True, work_dir: Optional[str] = None) -> dict:
    mach = machine()
    with tempfile.TemporaryDirectory(prefix="promptray-ray-bench-") as tmp:
        work = Path(work_dir or tmp)
        raw = job_config(work, sentiment_splits(work / "data"), steps)
        sides = {ENGINE: run_engine(raw, work, "engine")}
        ray_sides, cluster = run_ray_sides(raw, work, default_resources)
        sides.update(ray_sides)
        sides[ENGINE_AFTER] = run_engine(raw, work, "engine_after")
    ratios = {name: round(s["tokens_per_s"] / engine_baseline(sides), 3) for name, s in sides.items()}
    return {"benchmark": "ray_overhead", "model": MODEL, "steps": steps, "batch": 8, "precision": "bf16",
            "machine": mach, "cluster": cluster, "sides": sides, "engine_baseline_tokens_per_s": round(
                engine_baseline(sides), 1), "tokens_per_s_ratio_vs_engine": ratios,
            "submit_to_first_step_s": sides[RAY_CPU2]["submit_to_first_step_s"],
            "load_average_1_5_15min_at_end": [round(x, 2) for x in os.getloadavg()]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="5 steps per side (a smoke check)")
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps per side")
    ap.add_argument("--no-default-resources", action="store_true", help=f"skip the '{RAY_DEFAULT}' side")
    ap.add_argument("--work-dir", default=None, help="keep data, runs and tables here (default: a temp dir)")
    ap.add_argument("--out", default="ray_overhead", help="results file name (benchmarks/results/NAME.json)")
    a = ap.parse_args(argv)
    result = run(5 if a.quick else a.steps, not a.no_default_resources, a.work_dir)
    path = write_result(a.out, result)
    print(table(summary_rows(result["sides"]), ["side", "tokens/s", "vs engine", "wall s", "submit->1st step s",
                                                "final loss"]))
    print(f"ray start --head: {result['cluster']['ray_start_head_s']} s; results: {path}")
    return result


if __name__ == "__main__":
    main()

"""The Ray Tune search as a job on one real `ray start --head` cluster (2 CPUs, token auth): the search CLI's
main() under `ray job submit` into a SeaweedFS S3 table, and `Client.submit_search` with two-worker trials
(TorchTrainers inside the trials) into a local table. Both publish only the best trial, with provenance."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from promptray.platform.table.table import PromptTable
from promptray.sdk import Client, JobStatus, SearchJob
from promptray.sdk.local_cluster import find_ray
from promptray.sdk.search_job import parse_search_result

from sdk_helpers import tuning_config

pytestmark = [pytest.mark.ray_cluster, pytest.mark.s3]
REPO = Path(__file__).resolve().parents[2]
JOB_TIMEOUT = 480


def search_job_config(model: Path, table: str, data_dir: Path, run_root: Path, counts: list[int]) -> dict:
    """The SDK tests' tiny sentiment config, 3 steps validated at every step, searching `counts`."""
    raw = tuning_config(model, table, [str(data_dir / "train.jsonl")], [str(data_dir / "val.jsonl")], run_root)
    raw["trainer"]["val_check_interval"] = 1
    raw["name"] = "sdk_search"
    raw["search"] = {"tasks": {"sentiment": {"total_virtual_tokens": counts}}, "max_concurrent_trials": 1,
                     "grace_period": 1, "reduction_factor": 2, "seed": 0}
    return raw


def check_published(result, table: str, counts: list[int]) -> None:
    """One version of the task, the best trial's, with the search's provenance."""
    assert result.table == table and result.trials == len(counts) and result.metric == "val_loss"
    best = result.best["sentiment"]
    assert best.config["sentiment.total_virtual_tokens"] in counts
    versions = {info.taskname: info.version for info in PromptTable(table).describe()}
    assert versions == result.versions
    history = PromptTable(table).history("sentiment")
    assert len(history) == 1
    prompt = PromptTable(table).get("sentiment")
    assert prompt.source["job"] == "promptray search" and prompt.source["search_id"] == result.search_id
    assert prompt.source["trial_id"] == best.trial_id and prompt.source["trial_config"] == best.config
    assert prompt.num_virtual_tokens == best.config["sentiment.total_virtual_tokens"]
    assert prompt.metrics["val_loss"] == pytest.approx(result.best_value("sentiment"))


def test_ray_job_submit_runs_the_search_cli_into_an_s3_table(ray_head, cluster_env, bucket, data_dir,
                                                             tiny_gpt2_path, tmp_path):
    table = f"s3://{bucket}/tables/search"
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump(search_job_config(tiny_gpt2_path, table, data_dir, tmp_path / "runs", [4, 1])))
    run = subprocess.run([find_ray(), "job", "submit", "--address", ray_head.dashboard_url, "--working-dir", ".",
                          "--", "python", "-m", "promptray.jobs.search", "--config", str(config),
                          "model.optim.lr=0.05"], env=cluster_env, cwd=REPO, capture_output=True, text=True,
                         timeout=JOB_TIMEOUT)
    out = run.stdout + run.stderr
    assert run.returncode == 0 and "succeeded" in out, out[-3000:]
    result = parse_search_result(out)
    assert result is not None, out[-3000:]
    check_published(result, table, [4, 1])
    run_dir = Path(result.run_dir)
    assert {"trials.csv", "trials.json", "search_plot.png", "tune"} <= {p.name for p in run_dir.iterdir()}


def test_sdk_submit_search_with_two_worker_trials(ray_head, data_dir, tiny_gpt2_path, tmp_path):
    client = Client(address=ray_head.dashboard_url, auth_token=ray_head.token)
    table = str(tmp_path / "table")
    raw = search_job_config(tiny_gpt2_path, table, data_dir, tmp_path / "runs", [4, 1])
    raw["ray"] = {"num_workers": 2}  # 1 CPU each: the cluster's 2 CPUs, one trial at a time
    raw["model"]["micro_batch_size"] = 2  # global batch 4 = 2 workers x 2
    job = client.submit_search(raw)
    assert isinstance(job, SearchJob)
    assert job.wait(timeout=JOB_TIMEOUT, show_progress=False, poll_s=1.0) is JobStatus.SUCCEEDED
    result = job.result()
    check_published(result, table, [4, 1])
    assert PromptTable(table).get("sentiment").source["group"] == "sentiment"
    rows = json.loads((Path(result.run_dir) / "trials.json").read_text())
    assert len(rows) == 2 and all(r["status"] == "ok" and r["workers"] == 2 for r in rows)
    found = client.get_job(job.id)
    assert isinstance(found, SearchJob) and found.result().search_id == result.search_id
    listed = {j.id: j for j in client.list_jobs()}[job.id]
    assert listed.metadata["promptray"] == "search" and listed.metadata["table"] == table

"""Job submission end to end on one real `ray start --head` cluster (2 CPUs, token auth) with a SeaweedFS S3
table: the `ray job submit` CLI, Ray's JobSubmissionClient, and the SDK (submit, wait, logs, metrics, result,
list_jobs, get_job, cancel) with every error a job can end in."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import yaml

from promptray.platform.table.table import PromptTable
from promptray.sdk import (
    Client,
    ClusterAuthError,
    JobCancelledError,
    JobConfigError,
    JobFailedError,
    JobNotFoundError,
    JobResultError,
    JobStatus,
    JobTimeoutError,
    TaskTemplate,
)
from promptray.sdk.local_cluster import find_ray
from promptray.sdk.models import parse_metrics, parse_result

from sdk_helpers import TEMPLATE, tuning_config

pytestmark = [pytest.mark.ray_cluster, pytest.mark.s3]
REPO = Path(__file__).resolve().parents[2]
JOB_TIMEOUT = 240


def _ray_cli(args: list[str], env: dict[str, str], timeout: float = JOB_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([find_ray(), *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _published(table: str) -> dict[str, str]:
    return {info.taskname: info.version for info in PromptTable(table).describe()}


def _check_run(metrics, result, table: str, steps: int = 3) -> None:
    """The job logged every step once, validated at the end and published its task into `table`."""
    assert [m.step for m in metrics] == list(range(1, steps + 1))
    assert {m.total_steps for m in metrics} == {steps}
    assert all(m.loss is not None and m.loss > 0 and m.tokens_per_s > 0 for m in metrics)
    assert metrics[-1].val_loss is not None and result.best_val_loss == pytest.approx(metrics[-1].val_loss)
    assert result.table == table and result.steps == steps and result.tasks == ["sentiment"]
    assert _published(table) == result.versions


def test_ray_job_submit_cli_trains_into_an_s3_table(ray_head, cluster_env, bucket, data_dir, tiny_gpt2_path,
                                                    tmp_path):
    url = ray_head.dashboard_url
    refused = _ray_cli(["job", "list", "--address", url],
                       {k: v for k, v in cluster_env.items() if not k.startswith("RAY_AUTH")}, timeout=120)
    assert refused.returncode != 0 and "Unauthorized" in refused.stdout + refused.stderr
    table = f"s3://{bucket}/tables/cli"
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(tuning_config(tiny_gpt2_path, table, [str(data_dir / "train.jsonl")],
                                                   [str(data_dir / "val.jsonl")], tmp_path / "runs")))
    run = _ray_cli(["job", "submit", "--address", url, "--working-dir", ".", "--", "python", "-m",
                    "promptray.jobs.train", "--config", str(config), "model.optim.lr=0.02"], cluster_env)
    out = run.stdout + run.stderr
    assert run.returncode == 0 and "succeeded" in out, out[-3000:]
    _check_run(parse_metrics(out), parse_result(out), table)


def test_job_submission_client_job_is_followed_by_the_sdk(ray_head, bucket, data_dir, tiny_gpt2_path, tmp_path):
    from ray.job_submission import JobSubmissionClient

    table = f"s3://{bucket}/tables/jsc"
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "job.yaml").write_text(yaml.safe_dump(tuning_config(
        tiny_gpt2_path, table, [str(data_dir / "train.jsonl")], [str(data_dir / "val.jsonl")], tmp_path / "runs")))
    ray_client = JobSubmissionClient(ray_head.dashboard_url, headers=ray_head.auth_headers)
    job_id = ray_client.submit_job(entrypoint="python -m promptray.jobs.train --config job.yaml",
                                   runtime_env={"working_dir": str(folder)})
    client = Client(address=ray_head.dashboard_url, auth_token=ray_head.token)
    job = client.get_job(job_id)
    assert job.wait(timeout=JOB_TIMEOUT, show_progress=False, poll_s=0.5) is JobStatus.SUCCEEDED
    assert ray_client.get_job_status(job_id).value == "SUCCEEDED"
    _check_run(job.metrics(), job.result(), table)
    assert job_id in [j.id for j in client.list_jobs()]  # a train job submitted without the SDK is listed


def test_sdk_keyword_job_stages_its_files_and_reports(ray_head, bucket, data_dir, tiny_gpt2_path, tmp_path,
                                                      monkeypatch, capsys):
    monkeypatch.chdir(data_dir)  # relative local data files, staged to the table's bucket
    table = f"s3://{bucket}/tables/kw"
    client = Client(address=ray_head.dashboard_url, table=table, auth_token=ray_head.token, stage_files="always")
    job = client.submit_tuning(
        base_model=str(tiny_gpt2_path), tasks=[TaskTemplate(**TEMPLATE)], train_files=["train.jsonl"],
        validation_files=["val.jsonl"], max_steps=3, precision=32, seed=1, lr=0.01,
        overrides={"exp_manager.exp_dir": str(tmp_path / "runs"), "model.encoder_seq_length": 64,
                   "trainer.log_every_n_steps": 1})
    assert job.wait(timeout=JOB_TIMEOUT, show_progress=True, poll_s=0.5) is JobStatus.SUCCEEDED
    assert "3/3" in capsys.readouterr().err  # the progress bar reached the last step
    staged = PromptTable(table).store.list_objects("_staging/")
    assert sorted(o.key.rsplit("/", 1)[1] for o in staged) == ["train.jsonl", "val.jsonl"]
    _check_run(job.metrics(), job.result(), table)
    logs = job.logs()
    assert "PROMPTRAY_RESULT" in logs and "".join(job.logs(follow=True)) == logs
    listed = {j.id: j for j in client.list_jobs()}[job.id]
    assert listed.status is JobStatus.SUCCEEDED and listed.metadata["tasks"] == "sentiment"
    assert listed.metadata["table"] == table and "promptray.jobs.train" in listed.entrypoint


def test_sdk_invalid_config_is_not_submitted_and_a_failed_job_has_its_log_tail(ray_head, tiny_gpt2_path, tmp_path):
    client = Client(address=ray_head.dashboard_url, auth_token=ray_head.token)
    submitted = len(client.list_jobs(all_jobs=True))
    with pytest.raises(JobConfigError) as invalid:  # checked on the client: nothing reaches the cluster
        client.submit_tuning(base_model=str(tiny_gpt2_path), tasks=[], train_files=[], max_steps=0)
    assert [p.split(":")[0] for p in invalid.value.problems] == [  # one report (issue 13): the table too
        "tasks", "train_files", "max_steps", "model.nemo_path"]
    assert len(client.list_jobs(all_jobs=True)) == submitted

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"sentence": "fine", "label": "positive"}\n{"sentence": broken\n')
    failing = client.submit_tuning(tuning_config(tiny_gpt2_path, str(tmp_path / "table"), [str(bad)], [],
                                                 tmp_path / "runs"))
    with pytest.raises(JobFailedError) as failed:
        failing.wait(timeout=JOB_TIMEOUT, show_progress=False, poll_s=0.5)
    assert type(failed.value) is JobFailedError and failed.value.status == "FAILED"
    assert "bad.jsonl:2: invalid JSON" in failed.value.log_tail and failed.value.log_tail in str(failed.value)
    with pytest.raises(JobFailedError):
        failing.result()


def test_sdk_timeout_cancel_no_result_missing_job_and_wrong_token(ray_head, data_dir, tiny_gpt2_path, tmp_path):
    client = Client(address=ray_head.dashboard_url, auth_token=ray_head.token)
    endless = client.submit_tuning(tuning_config(tiny_gpt2_path, str(tmp_path / "table"),
                                                 [str(data_dir / "train.jsonl")], [], tmp_path / "runs",
                                                 steps=100_000))
    deadline = time.monotonic() + JOB_TIMEOUT
    while not endless.metrics() and time.monotonic() < deadline:  # cancel a job that is really training
        time.sleep(0.5)
    assert endless.status() is JobStatus.RUNNING and endless.metrics()[0].total_steps == 100_000
    with pytest.raises(JobTimeoutError, match="it keeps running"):
        endless.wait(timeout=0.5, show_progress=False, poll_s=0.1)
    assert endless.cancel() is True and endless.status() is JobStatus.STOPPED
    with pytest.raises(JobCancelledError, match=f"job {endless.id} stopped"):
        endless.wait(show_progress=False)

    plain = client.get_job(client.connect().submit("python -c \"print('not a training job')\"", {}, {}))
    with pytest.raises(JobResultError, match="no PROMPTRAY_RESULT line"):
        plain.result(timeout=JOB_TIMEOUT)
    with pytest.raises(JobNotFoundError, match="no job 'raysubmit_missing'"):
        client.get_job("raysubmit_missing")
    with pytest.raises(ClusterAuthError, match="sent a token that the cluster rejected"):
        Client(address=ray_head.dashboard_url, auth_token="not-the-token").list_jobs()

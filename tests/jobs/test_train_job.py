"""The Ray Train job (`python -m promptray.jobs.train`): 1 and 2 workers, FSDP2, fault recovery, the stdout
contract, and clear config errors. Tiny random-weight models; the in-process runs share one local Ray."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from promptray.jobs.config import load_job_config
from promptray.jobs.faults import FAULTS_ENV
from promptray.jobs.train import METRICS_PREFIX, RESULT_PREFIX, absolutize, main, run_job
from promptray.platform.table.table import PromptTable
from promptray.platform.train.trainer import train

REPO = Path(__file__).resolve().parents[2]
WORDS = "apple river stone cloud green tiger music paper candle window garden silver".split()
CONTRACT_KEYS = ["step", "total_steps", "loss", "tokens_per_s"]


def job_config(tmp_path: Path, model: Path, style: str = "prompt-tuning", **ray) -> dict:
    """Two tasks, 4 steps of global batch 8 (micro-batch 2), validation every 2 steps; `ray` keys merged in."""
    rng = random.Random(0)
    rows = [{"taskname": t, "text": " ".join(rng.sample(WORDS, rng.randint(2, 6))),
             "label": " ".join(rng.sample(WORDS, 1 if t == "a" else 3))} for t in ("a", "b") for _ in range(20)]
    data = tmp_path / "job.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    templates = [{"taskname": t, "prompt_template": "<|VIRTUAL_PROMPT_0|> {text} label: {label}",
                  "total_virtual_tokens": k, "virtual_token_splits": [k], "answer_only_loss": True,
                  "answer_field": "label"} for t, k in (("a", 3), ("b", 5))]
    return {"name": "job", "trainer": {"max_steps": 4, "val_check_interval": 2, "precision": 32,
                                       "log_every_n_steps": 1},
            "exp_manager": {"exp_dir": str(tmp_path / "runs")}, "ray": ray,
            "model": {"language_model_path": str(model), "nemo_path": str(tmp_path / "table"),
                      "virtual_prompt_style": style, "new_tasks": ["a", "b"], "task_templates": templates,
                      "global_batch_size": 8, "micro_batch_size": 2, "optim": {"lr": 0.05},
                      "data": {"train_ds": [str(data)], "validation_ds": [str(data)]}}}


def reference_prompts(raw: dict, tmp_path: Path) -> dict[str, torch.Tensor]:
    """The same config trained in this process, without Ray and without publishing."""
    cfg = load_job_config({**raw, "exp_manager": {"exp_dir": str(tmp_path / "reference")}})
    return train(cfg, progress=False, publish=False).prompts


def assert_table_matches(table_uri: str, versions: dict, reference: dict[str, torch.Tensor]) -> None:
    table = PromptTable(table_uri)
    assert table.tasks() == ["a", "b"] and set(versions) == {"a", "b"}
    for task, expected in reference.items():
        torch.testing.assert_close(table.get(task, versions[task]).embeddings, expected, rtol=1e-4, atol=1e-5)


def parse_lines(stdout: str) -> tuple[list[dict], list[dict]]:
    lines = stdout.splitlines()
    metrics = [json.loads(line[len(METRICS_PREFIX):]) for line in lines if line.startswith(METRICS_PREFIX)]
    results = [json.loads(line[len(RESULT_PREFIX):]) for line in lines if line.startswith(RESULT_PREFIX)]
    return metrics, results


# The subprocess test runs first: it starts (and stops) its own embedded Ray before the shared one exists.
@pytest.mark.ray
def test_cli_one_worker_on_embedded_ray_prints_the_contract_and_publishes(tmp_path, tiny_gpt2_path):
    raw = job_config(tmp_path, tiny_gpt2_path)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-m", "promptray.jobs.train", "--config", str(path),
                           "model.optim.lr=0.05", "--num-cpus", "1"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics, results = parse_lines(proc.stdout)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert all(list(m)[:4] == CONTRACT_KEYS and m["total_steps"] == 4 and m["loss"] > 0 and m["tokens_per_s"] > 0
               for m in metrics)
    assert [m["step"] for m in metrics if "val_loss" in m] == [2, 4]
    assert len(results) == 1
    result = results[0]
    assert list(result) == ["table", "versions", "steps", "best_val_loss", "best_step", "run_dir"]
    assert result["table"] == str(tmp_path / "table") and result["steps"] == 4
    assert result["best_val_loss"] == min(m["val_loss"] for m in metrics if "val_loss" in m)
    assert result["best_step"] == min((m for m in metrics if "val_loss" in m), key=lambda m: m["val_loss"])["step"]
    run_dir = Path(result["run_dir"])
    assert {"metrics.jsonl", "learning_curve.png", "summary.json"} <= {p.name for p in run_dir.iterdir()}
    assert json.loads((run_dir / "summary.json").read_text())["versions"] == result["versions"]
    # one Ray worker ends where one plain process ends
    assert_table_matches(result["table"], result["versions"], reference_prompts(raw, tmp_path))


@pytest.mark.ray
def test_two_workers_match_one_process_and_only_rank0_publishes(tmp_path, tiny_gpt2_path, ray_local):
    raw = job_config(tmp_path, tiny_gpt2_path, num_workers=2, num_to_keep=1)
    lines: list[str] = []
    payload = run_job(absolutize(load_job_config(raw)), echo=lines.append)
    metrics, _ = parse_lines("\n".join(lines))
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]  # printed once, by rank 0 only
    assert_table_matches(payload["table"], payload["versions"], reference_prompts(raw, tmp_path))
    assert all(len(PromptTable(payload["table"]).history(t)) == 1 for t in ("a", "b"))  # published once
    records = [json.loads(line) for line in (Path(payload["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4] and records[-1]["loss"] == metrics[-1]["loss"]
    checkpoints = [p for p in (Path(payload["run_dir"]) / "checkpoints").rglob("state.pt")]
    assert len(checkpoints) == 1  # num_to_keep: 1 (the final one)


@pytest.mark.ray
def test_fsdp_job_recovers_from_a_worker_failure_and_matches_one_process(tmp_path, tiny_llama_path, ray_local,
                                                                          monkeypatch):
    monkeypatch.setenv(FAULTS_ENV, json.dumps({"fail_at_step": 3}))  # the last worker exits once at step 3
    raw = job_config(tmp_path, tiny_llama_path, "p-tuning", num_workers=2, max_failures=1,
                     checkpoint_every_n_steps=2)
    raw["model"]["sharding"] = "fsdp"
    lines: list[str] = []
    payload = run_job(absolutize(load_job_config(raw)), echo=lines.append)
    run_dir = Path(payload["run_dir"])
    assert (run_dir / ".promptray_fault_at_step_3").is_file()  # the last worker did exit at step 3
    restarts = [json.loads(line) for line in (run_dir / "restarts.jsonl").read_text().splitlines()]
    assert [r["resumed_from_step"] for r in restarts] == [2]  # ... and the new group resumed from step 2
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    # FSDP2 (sharded frozen llama, untied embeddings) + a restart end where one uninterrupted process ends
    assert_table_matches(payload["table"], payload["versions"], reference_prompts(raw, tmp_path))


@pytest.mark.ray
def test_a_restart_after_publishing_does_not_publish_a_second_version(tmp_path, tiny_gpt2_path, ray_local,
                                                                      monkeypatch):
    monkeypatch.setenv(FAULTS_ENV, json.dumps({"fail_after_publish": True}))  # rank 0 exits once after publishing
    raw = job_config(tmp_path, tiny_gpt2_path, max_failures=1, checkpoint_every_n_steps=2)
    payload = run_job(absolutize(load_job_config(raw)), echo=lambda line: None)
    run_dir = Path(payload["run_dir"])
    assert (run_dir / ".promptray_fault_at_publish").is_file()  # rank 0 exited after it had published
    restarts = [json.loads(line) for line in (run_dir / "restarts.jsonl").read_text().splitlines()]
    assert [r["resumed_from_step"] for r in restarts] == [2]  # the new group trained steps 3-4 again ...
    table = PromptTable(payload["table"])
    for task in ("a", "b"):
        history = table.history(task)
        assert [h.version for h in history] == [payload["versions"][task]]  # ... and found its own versions
        assert table.get(task).source["run_id"].startswith("job-")
    assert_table_matches(payload["table"], payload["versions"], reference_prompts(raw, tmp_path))


def test_invalid_job_config_lists_every_problem_and_exits_2(tmp_path, capsys):
    raw = job_config(tmp_path, tmp_path / "no-model", num_workers=0, max_failures=-5,
                     resources_per_worker={"CPU": -1})
    raw["model"]["sharding"] = "zero3"
    raw["model"]["data"]["train_ds"] = [str(tmp_path / "missing.jsonl")]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "(5 problems)" in err, err  # the missing data file is in the same report
    for key in ("ray.num_workers", "ray.max_failures", "ray.resources_per_worker", "model.sharding",
                "model.data.train_ds[0]"):
        assert f"  - {key}:" in err
    path.write_text(yaml.safe_dump(job_config(tmp_path, tmp_path / "no-model")))
    (tmp_path / "job.jsonl").unlink()
    assert main(["--config", str(path)]) == 2  # missing data is found before any worker starts
    assert "model.data.train_ds[0]: file" in capsys.readouterr().err


def test_the_driver_checks_the_models_limits_when_it_has_the_model_and_leaves_them_to_the_workers_otherwise(
        tmp_path, tiny_gpt2_path, caplog):
    import logging

    from promptray.platform.errors import ConfigError
    from promptray.platform.model.limits import check_model_limits_on_driver

    raw = job_config(tmp_path, tiny_gpt2_path)  # tiny-gpt2 takes 256 positions
    raw["model"]["task_templates"][0].update(total_virtual_tokens=300, virtual_token_splits=[300])
    with pytest.raises(ConfigError, match=r"300 virtual tokens \+ 4 tokens of the template's text .* need 305 "
                                          r"positions, more than the 256 positions of base model"):
        check_model_limits_on_driver(load_job_config(raw))
    raw["model"]["language_model_path"] = "/models/on/the/workers/only"
    with caplog.at_level(logging.INFO, logger="promptray.platform.model.limits"):
        check_model_limits_on_driver(load_job_config(raw))
    assert "is not on this machine: its limits are checked by the workers" in caplog.text

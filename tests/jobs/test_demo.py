"""`promptray demo`: the platform journey end to end (`--quick`, as CI runs it), its cleanup by PID on Ctrl-C
and on an error, and the `--in-process` path; with --no-progress no progress bar reaches the terminal."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from promptray.jobs.cli import build_parser, demo_plan
from promptray.jobs.demo import QUICK, DemoPlan
from promptray.platform.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
PROMPTRAY = [sys.executable, "-m", "promptray.jobs.cli"]
BAR = re.compile(r"\d+%\|")  # what a tqdm bar draws


def _run_demo(out: Path, *flags: str, timeout: float = 540) -> subprocess.CompletedProcess:
    """Run `promptray demo`; past `timeout` s it gets SIGTERM (it then stops its cluster, as on Ctrl-C) before the
    test fails, so a slow run leaves no Ray cluster behind."""
    out.parent.mkdir(parents=True, exist_ok=True)
    args = [*PROMPTRAY, "demo", "--out", str(out), "--no-progress", *flags]
    with subprocess.Popen(args, cwd=out.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                stdout, stderr = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                stdout, stderr = proc.communicate()
            pytest.fail(f"promptray demo {' '.join(flags)} ran past {timeout} s (stopped)\n{stdout[-2000:]}"
                        f"\n{stderr[-2000:]}")
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)


def _cluster_processes(temp_dir: str, pgid: int) -> list[int]:
    """Processes still in the cluster's process group or naming its temp dir."""
    import psutil

    found = []
    for p in psutil.process_iter(["pid", "cmdline", "status", "cwd"]):
        try:
            if p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if (os.getpgid(p.info["pid"]) == pgid or temp_dir in " ".join(p.info["cmdline"] or ())
                    or (p.info["cwd"] or "").startswith(temp_dir)):  # a job's entrypoint: own session, cwd in it
                found.append(p.info["pid"])
        except (ProcessLookupError, psutil.Error):
            continue
    return found


def _wait_for_job_process(temp_dir: str, timeout: float = 120) -> bool:
    """Whether the job's entrypoint (`promptray.jobs.train`, working in the cluster's temp dir) started in time."""
    import time

    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in psutil.process_iter(["cmdline", "cwd"]):
            if "promptray.jobs.train" in " ".join(p.info["cmdline"] or ()) and (p.info["cwd"] or "").startswith(
                    temp_dir):
                return True
        time.sleep(0.5)
    return False


def _cluster_line(stdout: str) -> tuple[str, int]:
    """(temp dir, process group) from the demo's stage-1 note."""
    m = re.search(r"process group (\d+), logs in (\S+)", stdout)
    assert m, stdout
    return m.group(2), int(m.group(1))


def test_plan_flags():
    parse = build_parser().parse_args
    assert demo_plan(parse(["demo"])) == DemoPlan()
    assert demo_plan(parse(["demo", "--quick", "--steps", "5"])) == DemoPlan(**{**QUICK.__dict__, "steps": 5})
    with pytest.raises(ConfigError, match="--n-test 0: give a number >= 1"):
        demo_plan(parse(["demo", "--n-test", "0"]))


@pytest.mark.slow
@pytest.mark.ray_cluster
def test_quick_demo_runs_the_platform_journey_and_stops_everything(tmp_path):
    out = tmp_path / "runs" / "demo"
    proc = _run_demo(out, "--quick")
    assert proc.returncode == 0, proc.stderr[-3000:]
    stages = [line[:5] for line in proc.stdout.splitlines() if re.match(r"\[\d/6\] ", line)]
    assert stages == [f"[{i}/6]" for i in range(1, 7)]
    assert not BAR.search(proc.stdout + proc.stderr), "--no-progress showed a progress bar"
    assert not re.search(r"\bINFO\b", proc.stderr), proc.stderr  # Ray's job client's log lines stay out
    result = json.loads((out / "demo_result.json").read_text())

    from promptray.platform.table.table import PromptTable

    current = {i.taskname: i.version for i in PromptTable(result["table"]).describe()}
    jobs = result["jobs"]
    assert {t: j["style"] for t, j in jobs.items()} == {"sentiment": "prompt-tuning", "question_type": "p-tuning"}
    assert {t: j["version"] for t, j in jobs.items()} == current
    assert {t: j["steps"] for t, j in jobs.items()} == {"sentiment": 12, "question_type": 12}
    cl = result["continual_learning"]
    assert cl["bit_identical"] is True and cl["version_before"] == cl["version_after"] == current["sentiment"]

    serving = result["serving"]
    assert serving["tasks"] == current
    assert {r["route"] for r in serving["requests"]} == {"/v1/generate", "/v1/completions", "/v1/generate (stream)"}
    assert {r["task"] for r in serving["requests"]} == {"sentiment", "question_type"}
    for r in serving["requests"]:
        assert r["version"] == current[r["task"]] and r["latency_ms"] > 0
    streamed = next(r for r in serving["requests"] if "stream" in r["route"])
    assert "".join(streamed["chunks"]).strip() == streamed["answer"] and 0 < streamed["first_chunk_ms"]

    acc = result["accuracy"]
    assert {t: a["n_test"] for t, a in acc.items()} == {"sentiment": 32, "question_type": 16}  # what was scored
    for task, a in acc.items():
        for key in ("zero_shot", "tuned"):
            assert a[key] * a["n_test"] == pytest.approx(round(a[key] * a["n_test"]))  # hits / n_test
        assert a["versions"] == [current[task]]

    for path in [out / "demo.png", *(Path(j["learning_curve"]) for j in jobs.values())]:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for path in _readme_demo_paths():  # the README names what the demo writes
        assert (out / path).exists(), path

    cluster = result["cluster"]
    assert cluster["stopped_pids"] and cluster["left_running"] == []
    assert _cluster_processes(cluster["temp_dir"], cluster["pgid"]) == []
    assert "none left running" in proc.stdout


def _readme_demo_paths() -> list[str]:
    """The paths under runs/demo/ that the README's Quickstart lists."""
    text = (REPO / "README.md").read_text()
    quickstart = text[text.index("## Quickstart"):text.index("## Concepts")]
    return sorted({p.rstrip("/.,`)") for p in re.findall(r"runs/demo/([\w./-]+)", quickstart)} - {""})


@pytest.mark.slow
@pytest.mark.ray_cluster
def test_ctrl_c_stops_everything_by_pid(tmp_path):
    out = tmp_path / "demo"
    # as from a terminal: Ctrl-C not ignored, even when the test process ignores SIGINT (the full suite in CI
    # was seen to: an ignored signal stays ignored across exec, and the demo then ran to its end)
    proc = subprocess.Popen([*PROMPTRAY, "demo", "--quick", "--no-progress", "--out", str(out)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    try:
        for line in proc.stdout:  # interrupt while the first job's training process runs
            lines.append(line)
            if "submitted with Client.submit_tuning" in line:
                break
        temp_dir, _ = _cluster_line("".join(lines))
        assert _wait_for_job_process(temp_dir), "the job's training process never started"
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    stdout = "".join(lines) + rest
    assert proc.returncode == 130, err[-2000:]
    temp_dir, pgid = _cluster_line(stdout)
    assert "[6/6] stopped the embedded Ray cluster" in stdout and "none left running" in stdout
    assert _cluster_processes(temp_dir, pgid) == []
    assert not (out / "demo_result.json").exists()


@pytest.mark.slow
@pytest.mark.ray_cluster
def test_an_error_after_the_cluster_started_stops_it_too(tmp_path):
    proc = _run_demo(tmp_path / "demo", "--quick", "--model", str(tmp_path / "no-such-model"), timeout=180)
    assert proc.returncode == 2 and "no-such-model" in proc.stderr
    temp_dir, pgid = _cluster_line(proc.stdout)
    assert "none left running" in proc.stdout
    assert _cluster_processes(temp_dir, pgid) == []


@pytest.mark.slow
def test_in_process_demo_scores_what_it_says(tmp_path):
    out = tmp_path / "demo"
    proc = _run_demo(out, "--in-process", "--quick", "--steps", "4", "--question-steps", "4", "--n-test", "8",
                     timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not BAR.search(proc.stdout + proc.stderr), "--no-progress showed a progress bar"
    result = json.loads((out / "demo_result.json").read_text())
    assert {t: a["n_test"] for t, a in result["accuracy"].items()} == {"sentiment": 8, "question_type": 4}
    assert "n_test" not in result
    assert (out / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["learning_curves"] == [str(out / "sentiment" / "learning_curve.png"),
                                         str(out / "question_type" / "learning_curve.png")]
    assert [r["taskname"] for r in result["mixed_batch"]] == ["sentiment", "question_type"] * 3

"""The server of an older commit ("main before issue 15": `@serve.batch` static batches), for `serve_mixed`.

`baseline_server(commit, ...)` extracts the commit's tree (`git archive`) into the work dir, builds a shim dir
`promptray/{platform,jobs,serve,sdk}` -> that tree (the editable install's finder comes after the path finder
on `sys.meta_path`, so a `promptray` package earlier on `sys.path` wins), and starts this module as a child
process with PYTHONPATH = the shim: it starts its own local Ray and Serve (HTTP on `port`), serves the old
`build_app` and reports, from a Ray task with the replica's runtime_env, which `promptray.serve.app` file the
workers import. The context manager yields that report; on exit it closes the child's stdin (the child shuts
Serve and Ray down) and, if the child has not ended within 120 s, kills its process group (it was started in
its own session).

    python -m benchmarks.serve_baseline --serve '{"table": ..., "model": ..., "port": ..., "threads": 1}'
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FOLDERS = ("platform", "jobs", "serve", "sdk")


def commit_exists(commit: str) -> bool:
    """Whether `commit` names a commit of this repository."""
    r = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{commit}^{{commit}}"], capture_output=True)
    return r.returncode == 0


def head_commit() -> str:
    """HEAD of this repository, with "+dirty" when tracked files differ from it."""
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "-C", str(REPO), "diff", "--quiet", "HEAD"]).returncode != 0
    return head.strip() + ("+dirty" if dirty else "")


def make_shim(commit: str, work: Path) -> tuple[Path, str]:
    """(shim dir whose `promptray` package is `commit`'s code, full commit hash)."""
    full = subprocess.run(["git", "-C", str(REPO), "rev-parse", f"{commit}^{{commit}}"], capture_output=True,
                          text=True, check=True).stdout.strip()
    tree, shim = work / f"baseline_{full[:12]}", work / f"shim_{full[:12]}"
    if not tree.exists():
        data = subprocess.run(["git", "-C", str(REPO), "archive", full, *FOLDERS], capture_output=True,
                              check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(tree, filter="data")
    (shim / "promptray").mkdir(parents=True, exist_ok=True)
    (shim / "promptray" / "__init__.py").touch()
    for d in FOLDERS:
        link = shim / "promptray" / d
        if not link.exists():
            link.symlink_to(tree / d)
    return shim, full


def _read_report(proc: subprocess.Popen) -> dict:
    """The child's one JSON line (`{"ready": ...}` or `{"error": ...}`), skipping other output."""
    for line in proc.stdout:
        if line.startswith("{") and ('"ready"' in line or '"error"' in line):
            return json.loads(line)
    raise RuntimeError(f"baseline server exited (rc {proc.wait()}) before it was ready")


@contextlib.contextmanager
def baseline_server(commit: str, work: Path, *, table: str, model: str, port: int, threads: int, gpu: bool):
    """Serve `commit`'s app on 127.0.0.1:`port` in a child process; yields its report (commit, app files)."""
    shim, full = make_shim(commit, work)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shim), str(REPO)]), "OMP_NUM_THREADS": str(threads)}
    spec = {"table": table, "model": model, "port": port, "threads": threads, "gpu": gpu, "shim": str(shim)}
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.serve_baseline", "--serve", json.dumps(spec)],
                            cwd=str(REPO), env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        report = _read_report(proc)
        threading.Thread(target=proc.stdout.read, daemon=True).start()  # drain: a full pipe would block it
        if "error" in report:
            raise RuntimeError(f"baseline server at {full[:12]} failed: {report['error']}")
        yield {"commit": full, **report}
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _which_app(runtime_env: dict) -> str:
    """`promptray.serve.app.__file__` (resolved) as a Ray worker with `runtime_env` imports it."""
    import ray

    @ray.remote(num_cpus=0, runtime_env=runtime_env)
    def which() -> str:
        import promptray.serve.app as app

        return str(Path(app.__file__).resolve())

    return ray.get(which.remote())


def serve_child(spec: dict) -> None:
    """Child process: own local Ray + Serve with the shim's `build_app`; one JSON line; serve until stdin ends."""
    import ray
    from ray import serve

    import promptray.serve.app as app_module
    from promptray.serve.app import build_app
    from promptray.serve.schemas import ServerSettings

    threads = spec["threads"]
    runtime_env = {"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"], "OMP_NUM_THREADS": str(threads)}}
    actor = {"num_cpus": threads, "runtime_env": runtime_env, **({"num_gpus": 1} if spec["gpu"] else {})}
    ray.init(address="local", num_cpus=max(threads, os.cpu_count() or 1), include_dashboard=False,
             configure_logging=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": spec["port"]})
        settings = ServerSettings(table=spec["table"], model=spec["model"], precision="auto",
                                  accelerator="cuda" if spec["gpu"] else "cpu", max_batch_size=16,
                                  batch_wait_timeout_s=0.01, api_keys_env=None)
        serve.run(build_app(settings, ray_actor_options=actor), name="bench", route_prefix="/")
        print(json.dumps({"ready": True, "driver_app_file": str(Path(app_module.__file__).resolve()),
                          "worker_app_file": _which_app(runtime_env)}), flush=True)
        sys.stdin.read()
    except Exception as e:  # reported to the parent, which raises it
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        serve_child(json.loads(sys.argv[2]))
    else:
        sys.exit(__doc__)

"""A private single-node Ray cluster (`ray start --head`) on loopback, started and stopped by PID.

The SDK's `Client()` without an address starts one on first use and stops it at `close()` (or at exit);
the job-submission tests and `benchmarks/ray_overhead.py` use it too. Each cluster has its own temp dir,
free ports (GCS, dashboard, client server, node manager, object manager, agents, metrics) and its own auth
token, so it never meets another Ray on the machine, and `ray stop` (which stops *every* cluster of the
machine) is never needed: `stop()` signals the process group that `ray start` created, plus any process
whose command line names this cluster's temp dir.

    with LocalCluster(num_cpus=2) as cluster:
        JobSubmissionClient(cluster.dashboard_url, headers=cluster.auth_headers)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from promptray.platform.ports import free_ports
from promptray.sdk.auth import auth_headers, new_token, token_env
from promptray.sdk.errors import ClusterStartError

PORT_FLAGS = ("--port", "--dashboard-port", "--ray-client-server-port", "--node-manager-port",
              "--object-manager-port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
              "--runtime-env-agent-port", "--metrics-export-port")
DROPPED_ENV = ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE")


def find_ray() -> str:
    """The `ray` command of this Python environment (else the one on PATH)."""
    here = Path(sys.executable).parent / "ray"
    found = str(here) if here.exists() else shutil.which("ray")
    if not found:
        raise ClusterStartError("the `ray` command is missing: pip install 'promptray[ray]'")
    return found


class LocalCluster:
    """One `ray start --head` on 127.0.0.1 with token auth, a private temp dir and free ports.

    `env` is added to the environment of the cluster's processes (and so of the jobs it runs), e.g. the
    AWS_* variables of an S3 endpoint. `token` defaults to a fresh random one."""

    def __init__(self, num_cpus: int = 2, num_gpus: int = 0, env: Optional[dict[str, str]] = None,
                 token: Optional[str] = None, temp_root: Optional[str] = None):
        self.num_cpus, self.num_gpus = num_cpus, num_gpus
        self.extra_env = dict(env or {})
        self.token = token or new_token()
        self.temp_root = temp_root or ("/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir())
        self.temp_dir: Optional[Path] = None
        self.ports: dict[str, int] = {}
        self.pgid: Optional[int] = None

    # ------------------------------------------------------------------ addresses
    @property
    def dashboard_url(self) -> str:
        """http://127.0.0.1:PORT of the dashboard: the Jobs API address the SDK submits to."""
        return f"http://127.0.0.1:{self.ports['--dashboard-port']}"

    @property
    def gcs_address(self) -> str:
        """127.0.0.1:PORT of the cluster's GCS (what `ray.init(address=...)` takes)."""
        return f"127.0.0.1:{self.ports['--port']}"

    @property
    def token_path(self) -> Path:
        """The file holding this cluster's auth token (in its temp dir, set once it has started)."""
        return self.temp_dir / "auth_token"

    @property
    def auth_headers(self) -> dict[str, str]:
        """The Authorization header that carries this cluster's token."""
        return auth_headers(self.token)

    def client_env(self) -> dict[str, str]:
        """Environment for Ray clients of this cluster (`ray job submit --address ...`)."""
        return token_env(self.token_path)

    # ------------------------------------------------------------------ start
    def _command(self) -> list[str]:
        ports = [f"{flag}={port}" for flag, port in self.ports.items()]
        return [find_ray(), "start", "--head", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
                "--include-dashboard=true", f"--num-cpus={self.num_cpus}", f"--num-gpus={self.num_gpus}",
                f"--temp-dir={self.temp_dir / 'ray'}", "--disable-usage-stats", *ports]

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
        # jobs run `python ...`: make that this environment's Python even when it is not activated
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        return {**env, **self.extra_env, **token_env(self.token_path)}

    def start(self, timeout: float = 90.0, attempts: int = 2) -> LocalCluster:
        """Start the cluster and wait until its dashboard answers; a start that fails (a port taken in the
        meantime) is retried on other ports. Raises ClusterStartError with the end of `ray start`'s output."""
        failure = ""
        for _ in range(attempts):
            failure = self._start_once(timeout)
            if not failure:
                return self
            self.stop()
        raise ClusterStartError(f"`ray start --head` did not bring up a cluster:\n{failure}")

    def _start_once(self, timeout: float) -> str:
        """One try on fresh ports and a fresh temp dir; '' on success, else the end of the start log."""
        self.temp_dir = Path(tempfile.mkdtemp(prefix="promptray-ray-", dir=self.temp_root))
        self.token_path.write_text(self.token)
        self.token_path.chmod(0o600)
        self.ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True))
        log_path = self.temp_dir / "ray-start.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(self._command(), env=self._env(), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.pgid = proc.pid  # start_new_session: `ray start` leads a new group; the daemons stay in it
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            rc = None
        if rc == 0 and self._wait_dashboard(timeout):
            return ""
        return f"(exit {rc}) " + "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])

    def _wait_dashboard(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        request = urllib.request.Request(f"{self.dashboard_url}/api/version", headers=self.auth_headers)
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(request, timeout=2) as r:
                    if r.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                time.sleep(0.25)
        return False

    # ------------------------------------------------------------------ stop
    def pids(self) -> list[int]:
        """PIDs of this cluster's processes: its process group, anything naming its temp dir or working in it (a
        job's entrypoint runs in a session of its own, in a working dir under the temp dir), and their children."""
        return sorted(p.pid for p in self._processes())

    def _processes(self) -> set:
        import psutil

        root = str(self.temp_dir) if self.temp_dir is not None else None
        found = set()
        for p in psutil.process_iter(["pid", "cmdline", "cwd"]):
            try:
                in_group = self.pgid is not None and os.getpgid(p.pid) == self.pgid
                names_dir = root is not None and root in " ".join(p.info["cmdline"] or ())
                works_in = root is not None and (p.info["cwd"] or "").startswith(root)
                if (in_group or names_dir or works_in) and p.pid != os.getpid():
                    found.add(p)
                    found.update(c for c in p.children(recursive=True) if c.pid != os.getpid())
            except (ProcessLookupError, psutil.Error):
                continue
        return found

    @staticmethod
    def _signal_all(processes: set, sig: int) -> set:
        """Send `sig` to each process still running (psutil checks it is the same process, not a reused PID);
        the ones still running."""
        import psutil

        alive = set()
        for p in processes:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    p.send_signal(sig)
                    alive.add(p)
            except (ProcessLookupError, psutil.Error):
                continue
        return alive

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM to every process of this cluster, SIGKILL to those left after `grace` s; remove the temp dir.
        The processes found before the first signal are kept track of, so a job's entrypoint that its killed
        parent left behind is stopped too."""
        known = self._processes()
        self._signal_all(known, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self._signal_all(known | self._processes(), 0) and time.monotonic() < deadline:
            time.sleep(0.25)
        for _ in range(20):
            if not self._signal_all(known | self._processes(), signal.SIGKILL):
                break
            time.sleep(0.25)
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        self.pgid = None

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

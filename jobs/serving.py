"""Deploying the Serve application of `serve/app.py` on a connected Ray: what `promptray serve` and
`promptray demo` share (the demo deploys on the SDK's embedded cluster, `promptray serve` on its own local Ray).
"""

from __future__ import annotations

from typing import Optional

from promptray.jobs.cli_common import missing_extra
from promptray.platform.errors import PromptrayError

APP_NAME = "promptray"


class ServerStartError(PromptrayError):
    """The server started but cannot serve (its replica said why)."""


def import_serving():
    """ray, ray.serve and the app builder, or MissingDependencyError saying what to install (the `ray` extra)."""
    try:
        import ray
        from ray import serve

        from promptray.serve.app import build_app
    except ModuleNotFoundError as e:
        raise missing_extra(e, "serving needs Ray Serve and FastAPI") from None
    return ray, serve, build_app


def actor_options(ray, settings) -> dict:
    """The replica's Ray resources: `settings.threads` CPUs (None: 1; Ray sets OMP_NUM_THREADS, and the replica
    torch's threads, to them), plus one GPU when `settings.accelerator` is auto/gpu and the cluster has a GPU
    (Ray hides GPUs from actors that ask for none)."""
    gpus = ray.cluster_resources().get("GPU", 0) if settings.accelerator in ("auto", "gpu", "cuda") else 0
    return {"num_cpus": settings.threads or 1, **({"num_gpus": 1} if gpus >= 1 else {})}


def deploy(settings, *, host: str, port: int, replicas: int = 1, max_replicas: Optional[int] = None,
           serving=None):
    """Start Serve's HTTP proxy on host:port and run the app (`build_app(settings)`: `replicas` replicas, or
    autoscaling between `replicas` and `max_replicas` on queue length) on the connected Ray; returns its
    deployment handle once every replica has started. Raises ServerStartError with the replica's reason when it
    cannot serve (e.g. no task of the table fits the base model). `serving`: what `import_serving()` returns
    (default: imported here)."""
    ray, serve, build_app = serving or import_serving()
    serve.start(http_options={"host": host, "port": port})
    autoscale = None if max_replicas is None else {"min_replicas": replicas, "max_replicas": max_replicas}
    app = build_app(settings, num_replicas=replicas, ray_actor_options=actor_options(ray, settings),
                    autoscaling_config=autoscale)
    handle = serve.run(app, name=APP_NAME, route_prefix="/")
    problem = handle.startup_problem.remote().result()
    if problem:
        raise ServerStartError(problem)
    return handle

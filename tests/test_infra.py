"""The KubeRay manifests and the container image definition: they parse, and their key fields are right
(no Kubernetes cluster or Docker daemon needed). The RayJob's training config passes promptray's own checks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from promptray.jobs.config import load_job_config

INFRA = Path(__file__).resolve().parents[1] / "infra"
MANIFESTS = sorted((INFRA / "kuberay").glob("*.yaml"))
RAY_API, RAY_KINDS = "ray.io/v1", {"RayCluster", "RayJob", "RayService"}
CORE_KINDS = {"ConfigMap": "v1", "Secret": "v1", "Service": "v1"}  # what may ship next to the Ray resources


def _documents() -> list[dict]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def _by_kind(kind: str) -> list[dict]:
    return [doc for doc in _documents() if doc["kind"] == kind]


def _cluster_specs() -> list[dict]:
    return [d["spec"] for d in _by_kind("RayCluster")] + [d["spec"]["rayClusterSpec"] for d in _by_kind("RayJob")]


def test_every_manifest_parses_and_names_its_api():
    assert {"raycluster.yaml", "rayjob.yaml"} <= {p.name for p in MANIFESTS}
    for doc in _documents():
        assert doc["apiVersion"] == (RAY_API if doc["kind"] in RAY_KINDS else CORE_KINDS[doc["kind"]]), doc["kind"]
        assert doc["metadata"]["name"]
    assert len(_by_kind("RayCluster")) == 1 and len(_by_kind("RayJob")) == 1


@pytest.mark.parametrize("spec", _cluster_specs(), ids=["raycluster", "rayjob"])
def test_clusters_have_cpu_and_gpu_worker_groups_and_token_auth(spec):
    assert spec["rayVersion"] == "2.60.0" and spec["authOptions"] == {"mode": "token"}
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"].startswith("promptray:")
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1 and groups["gpu"]["rayStartParams"]["num-gpus"] == "1"
    assert gpu["image"].endswith("-cuda")
    assert "nvidia.com/gpu" not in groups["cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    for group in groups.values():
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_rayjob_runs_promptray_train_on_the_configmap_config():
    job = _by_kind("RayJob")[0]["spec"]
    assert re.fullmatch(r"python -m promptray\.jobs\.train --config (\S+)", job["entrypoint"])
    config_path = Path(job["entrypoint"].split("--config ")[1])
    head = job["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mount = head["containers"][0]["volumeMounts"][0]
    volume = {v["name"]: v for v in head["volumes"]}[mount["name"]]
    configmap = {c["metadata"]["name"]: c for c in _by_kind("ConfigMap")}[volume["configMap"]["name"]]
    assert str(config_path.parent) == mount["mountPath"] and config_path.name in configmap["data"]
    cfg = load_job_config(yaml.safe_load(configmap["data"][config_path.name]))
    assert cfg.table_uri.startswith("s3://") and cfg.world_size == 2
    assert all(str(f).startswith("s3://") for f in cfg.model.data.train_ds + cfg.model.data.validation_ds)
    cpu_group = {g["groupName"]: g for g in job["rayClusterSpec"]["workerGroupSpecs"]}["cpu"]
    assert cfg.ray.resources_per_worker["CPU"] <= float(cpu_group["rayStartParams"]["num-cpus"])
    assert cfg.world_size <= cpu_group["maxReplicas"]


def test_dockerfile_installs_promptray_with_cpu_torch_by_default():
    text = (INFRA / "docker" / "Dockerfile").read_text()
    assert re.search(r"^FROM python:\$\{PYTHON_VERSION\}-slim$", text, re.M)
    assert re.search(r"^ARG TORCH_VARIANT=cpu$", text, re.M)
    assert 'download.pytorch.org/whl/${TORCH_VARIANT}' in text and '"torch==${TORCH_VERSION}"' in text
    assert 'pip install ".[ray,s3]"' in text and re.search(r"^USER ray$", text, re.M)
    for folder in ("platform", "jobs", "serve", "sdk"):
        assert re.search(rf"^COPY {folder} \./{folder}$", text, re.M)
    ignored = (INFRA / "docker" / "Dockerfile.dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored

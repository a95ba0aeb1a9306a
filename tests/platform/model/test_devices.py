"""trainer.accelerator: values and the fallback to the CPU (CPU-only checks; batches moved to a device are in
test_prefix.py, the CUDA runs themselves in test_cuda.py)."""

from __future__ import annotations

import logging

import pytest
import torch

from promptray.platform.config.run import accelerator_problem
from promptray.platform.config.schema import load_config
from promptray.platform.errors import ConfigError
from promptray.platform.generation.infer_config import load_infer_config
from promptray.platform.model.devices import resolve_device
from promptray.platform.train.trainer import train

from train_helpers import dp_config


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def fake_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


def test_cpu_is_none_and_gpu_falls_back_with_a_warning(no_cuda, caplog):
    assert resolve_device("cpu") is None and resolve_device("auto") is None
    assert not caplog.records  # auto without a GPU is not worth a warning
    with caplog.at_level(logging.WARNING, logger="promptray.platform.model.devices"):
        assert resolve_device("gpu") is None and resolve_device("CUDA") is None
    assert len(caplog.records) == 2 and "no CUDA GPU" in caplog.records[0].getMessage()


def test_auto_and_gpu_pick_the_current_cuda_device(fake_cuda):
    assert resolve_device("auto") == resolve_device("gpu") == torch.device("cuda", 0)
    assert resolve_device("cpu") is None  # cpu stays on the CPU even with a GPU


def test_bad_accelerators_are_reported_with_field_value_and_fix(tmp_path, tiny_gpt2_path):
    assert accelerator_problem("GPU") is None
    raw = dp_config(tmp_path, tiny_gpt2_path).model_dump(mode="json")
    raw["trainer"].update(accelerator="tpu", precision="fp8")
    with pytest.raises(ConfigError) as e:
        load_config(raw)
    text = str(e.value)
    assert "trainer.accelerator: got 'tpu'; use one of auto, cpu, gpu, cuda" in text
    assert "trainer.precision" in text  # every problem at once


def test_inference_reads_nemos_trainer_accelerator():
    base = ["virtual_prompt_model_file=t", "data_paths=[a.jsonl]"]
    assert load_infer_config(None, base).accelerator == "auto"
    assert load_infer_config(None, base + ["trainer.accelerator=cpu", "trainer.devices=1"]).accelerator == "cpu"
    assert load_infer_config(None, base + ["accelerator=gpu"]).accelerator == "gpu"
    with pytest.raises(ConfigError, match=r"accelerator \(or trainer.accelerator\): got 'ipu'"):
        load_infer_config(None, base + ["trainer.accelerator=ipu"])


def test_a_gpu_config_trains_on_the_cpu_where_there_is_no_gpu(tmp_path, tiny_gpt2_path, no_cuda, caplog):
    """NeMo configs say accelerator: gpu; on a CPU-only machine they run as written, with a warning."""
    cfg = dp_config(tmp_path, tiny_gpt2_path, steps=2)
    cfg.trainer.accelerator = "gpu"
    with caplog.at_level(logging.WARNING, logger="promptray.platform.model.devices"):
        result = train(cfg, progress=False)
    assert any("running on the CPU" in r.getMessage() for r in caplog.records)
    assert result.steps == 2 and set(result.versions) == {"a", "b"}
    assert all(t.device.type == "cpu" for t in result.prompts.values())

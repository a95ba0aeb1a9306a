"""The serving engine on a CUDA GPU gives the CPU's texts (fp32), with the prefix cache on the GPU. Skipped
where no GPU is visible (CI has none)."""

from __future__ import annotations

import pytest
import torch

from promptray.serve.engine import ServeEngine
from promptray.serve.schemas import SamplingParams, ServerSettings

from serve_helpers import INPUTS_FOR_UNITS, run

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_a_gpu_replica_serves_the_cpus_texts(table_uri, tiny_gpt2_path):
    engines = {acc: ServeEngine(ServerSettings(table=table_uri, model=str(tiny_gpt2_path), precision="fp32",
                                               accelerator=acc)) for acc in ("cpu", "gpu")}
    assert engines["gpu"].model.device.type == "cuda" and engines["cpu"].model.device.type == "cpu"
    greedy = SamplingParams(max_tokens=6, greedy=True)
    expected = run(engines["cpu"], INPUTS_FOR_UNITS, greedy)
    assert run(engines["gpu"], INPUTS_FOR_UNITS, greedy) == expected
    assert all(engines["gpu"].bank.get(k).is_cuda for k in engines["gpu"].bank.names)
    assert engines["gpu"].prefixes.enabled and engines["gpu"].prompts.loaded
    sampled = SamplingParams(max_tokens=6, temperature=0.8, top_p=0.9, seed=3)
    assert run(engines["gpu"], INPUTS_FOR_UNITS, sampled) == run(engines["gpu"], INPUTS_FOR_UNITS, sampled)

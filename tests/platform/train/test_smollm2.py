"""A few real training steps on the bundled smollm2-135m (slow: the real 135M-parameter model)."""

from __future__ import annotations

import pytest
import torch

from promptray.platform.config.schema import load_config
from promptray.platform.data.demo_data import movie_sentiment, write_splits
from promptray.platform.demo import sentiment_config
from promptray.platform.generation.decode import GenerationParams
from promptray.platform.generation.inference import load_inference_engine, predict, prepare
from promptray.platform.table.table import PromptTable
from promptray.platform.train.trainer import train

pytestmark = pytest.mark.slow


def test_prompt_tuning_smollm2_few_steps(tmp_path):
    data = write_splits("sentiment", movie_sentiment()[:400], tmp_path / "data", n_val=16, n_test=16)
    raw = sentiment_config(tmp_path, data, steps=6, model="smollm2-135m")
    raw["trainer"].update({"val_check_interval": 3, "limit_val_batches": 2})
    raw["model"]["micro_batch_size"] = raw["model"]["global_batch_size"] = 4
    result = train(load_config(raw), progress=False)

    table = PromptTable(result.table_uri)
    prompt = table.get("sentiment")
    assert prompt.embeddings.shape == (20, 576) and torch.isfinite(prompt.embeddings).all()
    assert prompt.base_model.hidden_size == 576 and prompt.base_model.vocab_size == 49152
    vals = [r["val_loss"] for r in map(eval_json, result.metrics_path.read_text().splitlines()) if "val_loss" in r]
    assert len(vals) == 2 and vals[-1] < vals[0]  # the answer loss falls within 6 steps at lr 3e-2

    engine = load_inference_engine(result.table_uri, precision="bf16")
    params = GenerationParams(max_new_tokens=3)
    examples = prepare(engine, [data["test"]], params.max_new_tokens)
    preds = predict(engine, examples, params, batch_size=8)
    assert len(preds) == 16 and all(isinstance(p, str) for p in preds)


def eval_json(line: str) -> dict:
    import json

    return json.loads(line)

"""`promptray infer` settings: NeMo's inference keys honoured or known-ignored, ranges, every problem at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from promptray.platform.config.infer import NO_MEANING, load_infer_config
from promptray.platform.errors import ConfigError

NEMO_YAML = Path(__file__).resolve().parents[2] / "jobs" / "fixtures" / "nemo_inference.yaml"
BASE = ["virtual_prompt_model_file=t", "data_paths=[a.jsonl]"]


def problems(overrides: list[str], path: Path | None = None) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_infer_config(str(path) if path else None, overrides)
    return e.value.problems


def test_nemos_file_is_read_as_written():
    cfg = load_infer_config(str(NEMO_YAML), BASE + ["pred_file_path=p.txt"])
    assert (cfg.batch_size, cfg.precision, cfg.accelerator, cfg.pred_file_path) == (2, "fp32", "gpu", "p.txt")
    gen = cfg.generation()
    assert (gen.min_tokens_to_generate, gen.logprobs, gen.repetition_penalty, gen.top_p) == (2, 0, 1.2, 0.9)
    assert set(NO_MEANING) == {"trainer.devices", "trainer.num_nodes", "trainer.logger", "num_workers",
                               "pipeline_model_parallel_split_rank"}


def test_nemos_unset_values_are_reported_as_not_set():
    text = str(pytest.raises(ConfigError, load_infer_config, str(NEMO_YAML), []).value)
    assert "virtual_prompt_model_file: not set" in text and "data_paths: empty" in text
    assert "pred_file_path: the file leaves it to be given (???); set pred_file_path=VALUE" in text
    assert "(3 problems)" in text


@pytest.mark.parametrize("value, expected", [("16", "bf16"), ("bf16", "bf16"), ("32", "fp32"), ("fp32", "fp32")])
def test_trainer_precision_is_honoured(value, expected):
    assert load_infer_config(None, BASE + [f"trainer.precision={value}"]).precision == expected
    assert load_infer_config(None, BASE).precision == "bf16"


def test_batch_size_from_either_place():
    assert load_infer_config(None, BASE).batch_size == 8
    assert load_infer_config(None, BASE + ["inference.batch_size=3"]).batch_size == 3
    assert load_infer_config(None, BASE + ["batch_size=5", "inference.batch_size=5"]).batch_size == 5


def test_every_problem_at_once():
    """Schema ranges, unknown keys, conflicts and unsupported values: one report."""
    got = "\n".join(str(p) for p in problems(BASE + [
        "inference.temperature=-1", "inference.top_p=0", "inference.top_k=-2", "inference.repetition_penalty=0",
        "inference.tokens_to_generate=0", "inference.min_tokens_to_generate=-1", "inference.batch_size=0",
        "inference.greedi=false", "pred_file=x", "batch_size=4", "trainer.precision=16", "precision=fp32",
        "tensor_model_parallel_size=2", "inference.all_probs=true", "trainer.accelerator=tpu"]))
    for expected in ["inference.temperature: Input should be greater than or equal to 0",
                     "inference.top_p: Input should be greater than 0", "inference.top_k:",
                     "inference.repetition_penalty: Input should be greater than 0",
                     "inference.tokens_to_generate: Input should be greater than or equal to 1",
                     "inference.min_tokens_to_generate:", "inference.batch_size: Input should be greater",
                     "inference.greedi: unknown key (did you mean 'greedy'?)",
                     "pred_file: unknown key (did you mean 'pred_file_path'?)",
                     "precision ('fp32') and trainer.precision (16) disagree",
                     "tensor_model_parallel_size: got 2; model parallelism is not supported, set it to 1",
                     "inference.all_probs: true is not supported", "inference.compute_logprob=true",
                     "accelerator (or trainer.accelerator): got 'tpu'"]:
        assert expected in got, expected


def test_cross_key_values():
    assert any("batch_size (4) and inference.batch_size (2) disagree" in p
               for p in problems(BASE + ["batch_size=4", "inference.batch_size=2"]))
    assert any("inference.min_tokens_to_generate: got 5, more than inference.tokens_to_generate (3)" in p
               for p in problems(BASE + ["inference.min_tokens_to_generate=5", "inference.tokens_to_generate=3"]))
    assert any("inference.top_logprobs: set, but inference.compute_logprob is not true" in p
               for p in problems(BASE + ["inference.top_logprobs=3"]))
    assert any("accelerator ('cpu') and trainer.accelerator ('gpu') disagree" in p
               for p in problems(BASE + ["accelerator=cpu", "trainer.accelerator=gpu"]))
    assert any("trainer.strategy: unknown key" in p for p in problems(BASE + ["trainer.strategy=ddp"]))

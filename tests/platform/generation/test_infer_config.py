"""`promptray infer` settings: NeMo's inference keys honoured or known-ignored, ranges, every problem at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from promptray.platform.errors import ConfigError
from promptray.platform.generation.infer_config import NO_MEANING, load_infer_config

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
    assert (gen.min_new_tokens, gen.logprobs, gen.repetition_penalty, gen.top_p) == (2, 0, 1.2, 0.9)
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
    for expected in ["inference.temperature: got -1; use a value >= 0",
                     "inference.top_p: got 0; use a value > 0", "inference.top_k: got -2; use a value >= 0",
                     "inference.repetition_penalty: got 0; use a value > 0",
                     "inference.tokens_to_generate: got 0; use a value >= 1",
                     "inference.min_tokens_to_generate: got -1; use a value >= 0",
                     "inference.batch_size: got 0; use a value >= 1",
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


# ----------------------------------------------------------------------------- issue 13: NeMo file variants

def test_nemo_global_batch_size_and_max_seq_length_are_honoured(tmp_path):
    variant = tmp_path / "variant.yaml"
    text = NEMO_YAML.read_text().replace("  batch_size: 2\n", "")
    variant.write_text(text + "global_batch_size: 16\nmax_seq_length: 64\n")
    cfg = load_infer_config(str(variant), BASE + ["pred_file_path=p.txt"])
    assert (cfg.batch_size, cfg.max_seq_length) == (16, 64)
    assert load_infer_config(None, BASE + ["micro_batch_size=3"]).batch_size == 3


def test_batch_sizes_that_disagree_and_a_max_seq_length_without_room_are_errors():
    assert problems(BASE + ["global_batch_size=16", "inference.batch_size=2"]) == [
        "inference.batch_size (2) and global_batch_size (16) disagree; they all set the number of records "
        "generated together (one process, one device), give one of them"]
    assert problems(BASE + ["max_seq_length=30"]) == [
        "max_seq_length: got 30, not above inference.tokens_to_generate (30); it caps prompt + generated tokens, "
        "so leave room for the prompt (or leave it out)"]


@pytest.mark.parametrize("override, expected", [
    ("inference.temperature=nan",
     "inference.temperature: nan is not a finite number; give a finite number (got 'nan')"),
    ("inference.tokens_to_generate=true",
     "inference.tokens_to_generate: true is a boolean, not a number; give a number (got True)"),
    ("inference.top_p=inf", "inference.top_p: inf is not a finite number; give a finite number (got 'inf')"),
])
def test_infer_numbers_refuse_booleans_nan_and_inf(override, expected):
    assert problems(BASE + [override]) == [expected]


def test_an_override_into_a_list_is_a_problem_not_a_traceback():
    assert problems(BASE + ["data_paths.5=b.jsonl"]) == [
        "data_paths.5: data_paths has 1 entries (indexes 0..0); an override changes an existing entry; to add one, "
        "give the whole list in the config"]


def test_fp16_precision_warns_that_it_runs_as_bf16(caplog):
    import logging

    with caplog.at_level(logging.WARNING):
        assert load_infer_config(None, BASE + ["trainer.precision=16-mixed"]).precision == "bf16"
    assert any("trainer.precision: '16-mixed' is fp16 in Lightning / NeMo; this engine has no fp16 path and runs it "
               "as bf16" in r.getMessage() for r in caplog.records)

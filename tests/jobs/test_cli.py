"""The `promptray` command: train and infer end to end, clear errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from promptray.jobs.cli import main
from promptray.jobs.config import load_job_config

REPO = Path(__file__).resolve().parents[2]


def _train_config(tmp_path: Path, model: Path) -> Path:
    rows = [{"taskname": t, "text": f"item {i}", "label": "yes" if i % 2 else "no"}
            for t in ("alpha", "beta") for i in range(12)]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    templates = [{"taskname": "alpha", "prompt_template": "<|VIRTUAL_PROMPT_0|> {text} label: {label}",
                  "total_virtual_tokens": 3, "virtual_token_splits": [3], "answer_only_loss": True,
                  "answer_field": "label"},
                 {"taskname": "beta",
                  "prompt_template": "<|VIRTUAL_PROMPT_0|> Q: {text}<|VIRTUAL_PROMPT_1|> A: {label}",
                  "total_virtual_tokens": 6, "virtual_token_splits": [4, 2], "answer_only_loss": True,
                  "answer_field": "label"}]
    cfg = {"name": "cli", "trainer": {"max_steps": 2, "precision": 32},
           "exp_manager": {"exp_dir": str(tmp_path / "runs")},
           "model": {"language_model_path": str(model), "nemo_path": str(tmp_path / "table"),
                     "new_tasks": ["alpha", "beta"], "task_templates": templates, "global_batch_size": 4,
                     "micro_batch_size": 4, "data": {"train_ds": [str(data)]}}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_then_infer_mixed_tasks(tmp_path, tiny_gpt2_path, capsys):
    cfg = _train_config(tmp_path, tiny_gpt2_path)
    assert main(["train", str(cfg), "trainer.max_steps=3", "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["steps"] == 3 and set(out["versions"]) == {"alpha", "beta"}

    data = tmp_path / "infer.jsonl"
    data.write_text(json.dumps({"taskname": "alpha", "text": "item 1", "label": "yes"}) + "\n"
                    + json.dumps({"taskname": "beta", "text": "item 2"}) + "\n")
    preds = tmp_path / "preds.jsonl"
    assert main(["infer", f"virtual_prompt_model_file={tmp_path / 'table'}", f"data_paths=[{data}]",
                 "inference.tokens_to_generate=3", "precision=fp32", f"output_file={preds}",
                 "trainer.devices=1", "tensor_model_parallel_size=1", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["records"] == 2 and summary["accuracy"]["alpha"]["n"] == 1
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert [r["taskname"] for r in rows] == ["alpha", "beta"]
    assert all(isinstance(r["prediction"], str) and r["task_version"].startswith("v000001") for r in rows)
    assert "correct" in rows[0] and "correct" not in rows[1]


def test_nemos_inference_yaml_runs_as_written_and_writes_pred_file_path(tmp_path, tiny_gpt2_path, capsys):
    """NeMo's megatron_gpt_prompt_learning_inference.yaml (tests/jobs/fixtures/nemo_inference.yaml): its keys
    are accepted, pred_file_path gets one line per record (the prompt, virtual tokens left out, then the
    generation; stripped, newlines as spaces) and output_file the JSON lines with per-token logprobs."""
    assert main(["train", str(_train_config(tmp_path, tiny_gpt2_path)), "--no-progress"]) == 0
    capsys.readouterr()
    records = [{"taskname": "alpha", "text": f"item {i}", "label": "yes"} for i in range(3)] + \
        [{"taskname": "beta", "text": "item 9"}]
    data = tmp_path / "infer.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    pred_file, out = tmp_path / "out" / "preds.txt", tmp_path / "out" / "preds.jsonl"
    assert main(["infer", "--config", str(REPO / "tests" / "jobs" / "fixtures" / "nemo_inference.yaml"),
                 f"virtual_prompt_model_file={tmp_path / 'table'}", f"data_paths=[{data}]",
                 f"pred_file_path={pred_file}", f"output_file={out}", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["records"] == 4 and summary["pred_file_path"] == str(pred_file)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    prompts = [f" item {i} label:" for i in range(3)] + [" Q: item 9 A:"]  # the templates, virtual tokens out
    expected = [(p + r["prediction"]).strip().replace("\n", " ") for p, r in zip(prompts, rows)]
    assert pred_file.read_text().splitlines() == expected
    for r in rows:  # compute_logprob: one entry per generated token; min_tokens_to_generate: 2
        lp = r["logprobs"]
        assert "".join(lp["tokens"]) == r["prediction"] and 2 <= len(lp["tokens"]) <= 4
        assert len(lp["token_logprobs"]) == len(lp["tokens"]) and all(x < 0 for x in lp["token_logprobs"])


def test_bad_config_is_one_clear_message_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  micro_batch_sise: 4\n  new_tasks: [x]\ntrainer:\n  precision: 7\n")
    proc = subprocess.run([sys.executable, "-m", "promptray.jobs.cli", "train", str(bad)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "did you mean 'micro_batch_size'" in proc.stderr
    assert "trainer.precision: got 7" in proc.stderr
    assert "task 'x' has no entry in model.task_templates" in proc.stderr


def test_infer_without_table_or_data_lists_both_problems(capsys):
    assert main(["infer", "inference.greedy=True"]) == 2
    err = capsys.readouterr().err
    assert "virtual_prompt_model_file: not set" in err and "data_paths: empty" in err


@pytest.mark.parametrize("name", ["sentiment_prompt_tuning.yaml", "questions_p_tuning.yaml", "sentiment_search.yaml"])
def test_example_configs_are_valid(name):
    cfg = load_job_config(REPO / "examples" / name)
    assert cfg.model.language_model_path == "smollm2-135m"
    if name == "sentiment_search.yaml":
        assert cfg.search.tasks["sentiment"].total_virtual_tokens == [5, 20, 50] and cfg.search.lr.max == 0.1


def _config_only_model(folder: Path, positions: int) -> Path:
    """A GPT-2 model folder with its config.json and no weights: checks that need only the config pass,
    anything that loads the weights fails."""
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_head=2, n_embd=8, n_positions=positions).save_pretrained(folder)
    return folder


def test_virtual_tokens_beyond_the_models_positions_are_named_before_its_weights_load(tmp_path, capsys):
    model = _config_only_model(tmp_path / "m512", 512)
    cfg = _train_config(tmp_path, model)
    raw = yaml.safe_load(cfg.read_text())
    raw["model"]["task_templates"][0].update(total_virtual_tokens=600, virtual_token_splits=[600])
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["train", str(cfg), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "(1 problem)" in err, err
    assert ("model.task_templates[0].total_virtual_tokens (task 'alpha'): 600 virtual tokens + at least 4 text "
            "tokens (no tokenizer files to count the template's) need 604 positions, more than the 512 positions of "
            f"base model '{model}' (max_position_embeddings); use at most 508 virtual tokens") in err
    assert "usable training examples" not in err


def test_a_negative_lr_or_clip_is_reported_before_the_model_loads_and_exits_2(tmp_path, capsys):
    cfg = _train_config(tmp_path, tmp_path / "no-model")  # nothing would load: the config fails first
    assert main(["train", str(cfg), "model.optim.lr=-1", "trainer.gradient_clip_val=-1.0", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "(2 problems)" in err, err
    assert "  - model.optim.lr: got -1; use a value > 0.0" in err
    assert "  - trainer.gradient_clip_val: got -1.0; use a value >= 0.0" in err
    assert not (tmp_path / "runs").exists()


def _table_of_two_base_models(tmp_path: Path, model_a: Path) -> tuple[Path, Path]:
    """Tasks qa, sentiment trained on `model_a` (hidden 32) and other on a model B (hidden 64)."""
    import shutil

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from promptray.platform.model.fingerprint import fingerprint_model
    from promptray.platform.table.table import PromptTable, TaskPrompt

    model_b = tmp_path / "model-b"
    torch.manual_seed(1)
    lm_b = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=64, n_positions=256, vocab_size=50257))
    lm_b.save_pretrained(model_b)
    for f in model_a.iterdir():
        if "token" in f.name or f.name in ("vocab.json", "merges.txt"):
            shutil.copy(f, model_b / f.name)
    lm_a = GPT2LMHeadModel.from_pretrained(model_a)
    table = PromptTable(tmp_path / "table")
    for name, lm, path, hidden in [("qa", lm_a, model_a, 32), ("sentiment", lm_a, model_a, 32),
                                   ("other", lm_b, model_b, 64)]:
        template = {"taskname": name, "prompt_template": "<|VIRTUAL_PROMPT_0|> {text} label: {label}",
                    "total_virtual_tokens": 3, "virtual_token_splits": [3], "truncate_field": "text",
                    "answer_only_loss": True, "answer_field": "label"}
        table.publish([TaskPrompt(name, torch.randn(3, hidden), template, "prompt-tuning",
                                  fingerprint_model(lm, str(path)))])
    return tmp_path / "table", model_b


def test_infer_loads_only_the_tasks_its_records_use_issue13(tmp_path, tiny_gpt2_path, capsys):
    table, model_b = _table_of_two_base_models(tmp_path, tiny_gpt2_path)
    data = tmp_path / "records.jsonl"
    data.write_text(json.dumps({"taskname": "qa", "text": "where?", "label": "here"}) + "\n"
                    + json.dumps({"taskname": "sentiment", "text": "good", "label": "yes"}) + "\n")
    base = ["infer", f"virtual_prompt_model_file={table}", f"data_paths=[{data}]", "inference.tokens_to_generate=2",
            "precision=fp32", f"output_file={tmp_path / 'p.jsonl'}"]
    for extra in ([], [f"gpt_model_file={tiny_gpt2_path}"], ["tasks=[qa,sentiment]"]):
        assert main(base + extra + ["--no-progress"]) == 0, capsys.readouterr().err
        summary = json.loads(capsys.readouterr().out)
        assert summary["records"] == 2 and sorted(summary["versions"]) == ["qa", "sentiment"]

    data.write_text(json.dumps({"taskname": "qa", "text": "where?"}) + "\n"
                    + json.dumps({"taskname": "other", "text": "x"}) + "\n")
    assert main(base) == 2
    err = capsys.readouterr().err
    assert f"gpt_model_file is not set and the tasks of the prompt table at {str(table)!r} were trained on 2 " \
           f"different base models: {str(tiny_gpt2_path)!r} ('qa'); {str(model_b)!r} ('other'); " \
           "set gpt_model_file" in err
    assert main(base + [f"gpt_model_file={model_b}", "tasks=[other]"]) == 2  # qa's record is not of the tasks
    assert "unknown taskname 'qa'" in capsys.readouterr().err


def test_infer_tokens_to_generate_beyond_the_models_positions_is_named_up_front_issue13(tmp_path, tiny_gpt2_path,
                                                                                       capsys):
    """F7: tokens_to_generate 600 on a model of 256 positions: the limit and the most it may be, never a
    negative max_seq_length nor a truncate_field hint."""
    from transformers import AutoTokenizer

    table, _ = _table_of_two_base_models(tmp_path, tiny_gpt2_path)
    data = tmp_path / "records.jsonl"
    data.write_text(json.dumps({"taskname": "sentiment", "text": "good"}) + "\n")
    base = ["infer", f"virtual_prompt_model_file={table}", f"data_paths=[{data}]", "precision=fp32",
            f"output_file={tmp_path / 'p.jsonl'}"]
    assert main(base + ["inference.tokens_to_generate=600", "--no-progress"]) == 2
    err = capsys.readouterr().err
    text = len(AutoTokenizer.from_pretrained(tiny_gpt2_path).encode("  label:"))  # empty {text}; ends before {label}
    assert text == 3
    assert ("inference.tokens_to_generate: 600 + 3 virtual tokens + 3 tokens of template text (task 'sentiment') "
            "exceed the model's 256 positions; use at most 250 (less for long inputs)") in err
    assert "max_seq_length=-" not in err and "truncate_field" not in err and "Traceback" not in err
    assert main(base + [f"inference.tokens_to_generate={256 - 3 - text}", "--no-progress"]) == 0  # the most: runs


def test_serve_detach_and_threads_are_checked_before_ray_starts(capsys, monkeypatch):
    import promptray.jobs.cli as cli

    monkeypatch.setattr(cli, "_import_serving", lambda: pytest.fail("Ray must not start on bad flags"))
    assert main(["serve", "--table", "s3://b/t", "--detach", "--threads", "0"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "promptray serve: error: invalid serve flags (2 problems):",
        "  - --detach without --address: the embedded local Ray ends with this command; give the cluster to "
        "deploy on (--address auto inside a Ray job or on a cluster node)",
        "  - --threads 0: input should be greater than or equal to 1"]


def test_serve_refuses_a_local_table_that_does_not_exist_before_ray_starts(tmp_path, capsys, monkeypatch):
    """A newcomer's typo in --table is named at once (it used to start Ray and Serve and fail after ~40 s)."""
    import promptray.jobs.cli as cli

    monkeypatch.setattr(cli, "_import_serving", lambda: pytest.fail("Ray must not start on a missing table"))
    missing = str(tmp_path / "no-such-table")
    assert main(["serve", "--table", missing]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "promptray serve: error: invalid serve flags (1 problem):",
        f"  - --table {missing!r}: no prompt table there (no such folder); give the folder a job published to, an "
        "s3:// table, or --model to serve a table that jobs will publish to later"]


def test_serve_refuses_a_kv_budget_below_the_prompt_cap_before_ray_starts(capsys, monkeypatch):
    """Found by a new user: --kv-budget-tokens 10 started a server on which every request was refused."""
    import promptray.jobs.cli as cli

    monkeypatch.setattr(cli, "_import_serving", lambda: pytest.fail("Ray must not start on bad flags"))
    assert main(["serve", "--table", "s3://b/t", "--kv-budget-tokens", "10"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "promptray serve: error: invalid serve flags (1 problem):",
        "  - --kv-budget-tokens (10) is below --max-prompt-tokens (4096): prompts the cap allows could never run; "
        "raise --kv-budget-tokens or lower --max-prompt-tokens"]

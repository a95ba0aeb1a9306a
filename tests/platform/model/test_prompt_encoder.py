"""Tests of prompt initialisation, the p-tuning encoder and the prompt bank."""

from __future__ import annotations

import pytest
import torch

from promptray.platform.model.prompt_encoder import (
    PromptBank,
    PromptEncoder,
    init_from_text,
    init_from_vocab,
    init_random,
)

MODELS = ["tiny_gpt2", "tiny_llama"]
H = 16


def _is_vocab_row(row: torch.Tensor, vocab: torch.Tensor) -> bool:
    return bool((vocab == row).all(dim=-1).any())


# ----------------------------------------------------------------------------- initialisation

@pytest.mark.parametrize("fixture", MODELS)
def test_init_from_text_tiles_and_truncates_without_touching_vocab(fixture, request):
    lm, tokenizer = request.getfixturevalue(fixture)
    vocab = lm.get_input_embeddings().weight
    before = vocab.detach().clone()
    ids = tokenizer.encode("Hello big world", add_special_tokens=False)
    assert len(ids) == 3
    a, b, c = ids

    rows = init_from_text("Hello big world", 7, tokenizer, vocab)
    assert rows.shape == (7, vocab.shape[1]) and rows.dtype == torch.float32
    assert not rows.requires_grad
    assert torch.equal(rows, before[[a, b, c, a, b, c, a]])

    short = init_from_text("Hello big world", 2, tokenizer, vocab)
    assert torch.equal(short, before[[a, b]])
    exact = init_from_text("Hello big world", 3, tokenizer, vocab)
    assert torch.equal(exact, before[[a, b, c]])

    rows.add_(1.0)  # a copy: writing to it never reaches the vocabulary
    assert torch.equal(vocab.detach(), before)
    assert vocab.requires_grad  # the model's parameter is left as it was


def test_init_from_text_rejects_empty_text(tiny_gpt2):
    lm, tokenizer = tiny_gpt2
    with pytest.raises(ValueError, match="tokenizes to nothing"):
        init_from_text("", 4, tokenizer, lm.get_input_embeddings().weight)


def test_init_random_matches_vocab_std_and_is_seeded():
    gen = torch.Generator().manual_seed(0)
    vocab = torch.randn(5000, 32, generator=gen) * 0.37
    rows = init_random(4000, vocab, torch.Generator().manual_seed(1))
    assert rows.shape == (4000, 32) and rows.dtype == torch.float32
    vocab_std = float(vocab.std())
    assert abs(float(rows.std()) - vocab_std) < 0.02 * vocab_std
    assert abs(float(rows.mean())) < 0.02 * vocab_std
    again = init_random(4000, vocab, torch.Generator().manual_seed(1))
    assert torch.equal(rows, again)
    other = init_random(4000, vocab, torch.Generator().manual_seed(2))
    assert not torch.equal(rows, other)


@pytest.mark.parametrize("fixture", MODELS)
def test_init_random_on_model_vocab(fixture, request):
    lm, _ = request.getfixturevalue(fixture)
    vocab = lm.get_input_embeddings().weight
    before = vocab.detach().clone()
    rows = init_random(3000, vocab, torch.Generator().manual_seed(0))
    assert rows.shape == (3000, vocab.shape[1])
    assert abs(float(rows.std()) - float(before.std())) < 0.03 * float(before.std())
    assert torch.equal(vocab.detach(), before)


@pytest.mark.parametrize("fixture", MODELS)
def test_init_from_vocab_rows_are_vocab_rows(fixture, request):
    lm, _ = request.getfixturevalue(fixture)
    vocab = lm.get_input_embeddings().weight
    before = vocab.detach().clone()
    rows = init_from_vocab(6, vocab, torch.Generator().manual_seed(3))
    assert rows.shape == (6, vocab.shape[1]) and rows.dtype == torch.float32
    assert all(_is_vocab_row(r, before) for r in rows)
    assert len({tuple(r.tolist()) for r in rows}) == 6  # 6 of 50k tokens: distinct with this seed
    assert torch.equal(rows, init_from_vocab(6, vocab, torch.Generator().manual_seed(3)))
    rows.add_(1.0)
    assert torch.equal(vocab.detach(), before)


# ----------------------------------------------------------------------------- p-tuning encoder

@pytest.mark.parametrize("encoder_type", ["lstm", "mlp"])
def test_prompt_encoder_shapes_and_distinct_tasks(encoder_type):
    torch.manual_seed(0)
    enc = PromptEncoder({"a": 3, "b": 5, "c": 3}, H, encoder_type, encoder_hidden=24, num_layers=2)
    a, b, c = enc("a"), enc("b"), enc("c")
    assert a.shape == (3, H) and b.shape == (5, H) and c.shape == (3, H)
    assert a.dtype == torch.float32
    assert not torch.allclose(a, b[:3]) and not torch.allclose(a, c)
    assert torch.equal(enc("a"), a)  # deterministic without dropout
    with pytest.raises(ValueError):
        enc("missing")


@pytest.mark.parametrize("encoder_type", ["lstm", "mlp"])
def test_prompt_encoder_gradients_reach_shared_weights_from_both_tasks(encoder_type):
    torch.manual_seed(0)
    enc = PromptEncoder({"a": 3, "b": 5}, H, encoder_type, num_layers=2)
    shared = [p for n, p in enc.named_parameters() if not n.startswith("inputs.")]
    assert shared

    enc("a").pow(2).sum().backward()
    assert enc.inputs[0].grad is not None and float(enc.inputs[0].grad.abs().sum()) > 0
    assert enc.inputs[1].grad is None  # task b's input takes no part in task a's prompt
    grads_a = [p.grad.clone() for p in shared]
    assert all(float(g.abs().sum()) > 0 for g in grads_a[-2:])  # the output head

    enc.zero_grad()
    enc("b").pow(2).sum().backward()
    assert enc.inputs[0].grad is None and float(enc.inputs[1].grad.abs().sum()) > 0
    grads_b = [p.grad.clone() for p in shared]

    enc.zero_grad()
    (enc("a").pow(2).sum() + enc("b").pow(2).sum()).backward()
    for p, ga, gb in zip(shared, grads_a, grads_b):
        assert torch.allclose(p.grad, ga + gb, atol=1e-6)
    assert all(float(p.grad.abs().sum()) > 0 for p in shared if p.dim() == 2)


def test_prompt_encoder_single_layer_mlp():
    torch.manual_seed(0)
    enc = PromptEncoder({"a": 4}, H, "mlp", num_layers=1)
    assert enc("a").shape == (4, H)


# ----------------------------------------------------------------------------- the bank

def _bank(dropout: float = 0.0, encoder_type: str = "lstm") -> tuple[PromptBank, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    frozen, tuned = torch.randn(2, H, generator=gen), torch.randn(3, H, generator=gen)
    bank = PromptBank(H)
    bank.add_frozen("f", frozen)
    bank.add_tuned("t", tuned)
    bank.set_encoder(PromptEncoder({"e": 4}, H, encoder_type, num_layers=2, dropout=dropout))
    return bank, {"f": frozen, "t": tuned}


def test_frozen_entries_are_buffers_without_grad():
    source = torch.randn(2, H, requires_grad=True)
    bank = PromptBank(H)
    bank.add_frozen("f", source)
    stored = bank.get("f")
    assert not stored.requires_grad
    assert torch.equal(stored, source.detach())
    assert all(p is not stored for p in bank.parameters())
    assert list(bank.parameters()) == []
    assert "frozen_0" in dict(bank.named_buffers())
    with torch.no_grad():
        source.add_(1.0)  # a copy was stored
    assert not torch.equal(bank.get("f"), source.detach())

    bank.add_tuned("t", torch.zeros(3, H))
    assert [p.shape for p in bank.parameters()] == [torch.Size([3, H])]
    assert bank.names == ["f", "t"] and bank.new_names == ["t"]


def test_frozen_entries_stored_as_float32():
    bank = PromptBank(H)
    bank.add_frozen("f", torch.randn(2, H, dtype=torch.bfloat16))
    bank.add_tuned("t", torch.randn(2, H, dtype=torch.bfloat16))
    assert bank.get("f").dtype == torch.float32 and bank.get("t").dtype == torch.float32


def test_prompts_added_after_a_move_go_where_the_bank_is():
    bank = PromptBank(4)
    bank.add_frozen("old", torch.ones(2, 4))
    bank.to(torch.device("meta"))  # stands in for an accelerator (serving loads prompts after the move)
    bank.add_frozen("new", torch.ones(3, 4, dtype=torch.float64))
    bank.add_tuned("tuned", torch.zeros(1, 4))
    assert bank.device.type == "meta"
    assert all(bank.get(n).is_meta and bank.get(n).dtype == torch.float32 for n in ("old", "new", "tuned"))
    assert "_anchor" not in bank.state_dict()  # only marks the device; not saved


def test_lookup_offsets_for_mixed_tasks():
    bank, src = _bank()
    bank.eval()
    rows, offsets = bank.lookup(["t", "f", "t", "e", "f"])
    assert offsets.tolist() == [0, 3, 0, 5, 3]
    assert offsets.dtype == torch.long
    assert rows.shape == (3 + 2 + 4, H)
    assert torch.equal(rows[0:3], src["t"])
    assert torch.equal(rows[3:5], src["f"])
    assert torch.equal(rows[5:9], bank.get("e"))

    rows2, offsets2 = bank.lookup(["e"])
    assert offsets2.tolist() == [0] and rows2.shape == (4, H)
    with pytest.raises(KeyError, match="unknown task"):
        bank.lookup(["t", "nope"])


@pytest.mark.parametrize("encoder_type", ["lstm", "mlp"])
def test_export_is_detached_float32_and_in_eval_mode(encoder_type):
    bank, src = _bank(dropout=0.5, encoder_type=encoder_type)
    bank.train()
    # in training mode, dropout makes the encoder's output random
    assert not torch.equal(bank.get("e"), bank.get("e"))

    first, second = bank.export(), bank.export()
    assert list(first) == ["t", "e"]  # default: the new tasks
    for name in first:
        assert first[name].dtype == torch.float32
        assert not first[name].requires_grad and first[name].grad_fn is None
        assert torch.equal(first[name], second[name])
    assert bank.training and bank.encoder.training  # mode restored
    assert torch.equal(first["t"], src["t"])
    assert first["e"].shape == (4, H)

    bank.eval()
    with torch.no_grad():
        assert torch.equal(first["e"], bank.get("e"))
    bank.train()

    first["t"].add_(1.0)  # exported tensors are copies
    assert torch.equal(bank.get("t").detach(), src["t"])

    picked = bank.export(["f"])
    assert list(picked) == ["f"] and torch.equal(picked["f"], src["f"])


def test_duplicate_task_raises():
    bank, _ = _bank()
    with pytest.raises(ValueError, match="already in the prompt bank"):
        bank.add_frozen("f", torch.zeros(1, H))
    with pytest.raises(ValueError, match="already in the prompt bank"):
        bank.add_tuned("f", torch.zeros(1, H))
    with pytest.raises(ValueError, match="already in the prompt bank"):
        bank.add_tuned("e", torch.zeros(1, H))
    other = PromptBank(H)
    other.add_tuned("t", torch.zeros(1, H))
    with pytest.raises(ValueError, match="already in the prompt bank"):
        other.set_encoder(PromptEncoder({"x": 2, "t": 2}, H))
    with pytest.raises(ValueError, match="hidden size"):
        other.add_frozen("g", torch.zeros(2, H + 1))
    assert other.names == ["t"]


def test_init_goes_through_a_scaling_embedding_module():
    """Models such as Gemma scale inside the embedding module: init rows must be what the model sees."""
    from promptray.platform.model.prompt_encoder import init_from_text, init_from_vocab

    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(50, 4, generator=torch.Generator().manual_seed(0)))

        def forward(self, ids):
            return self.weight[ids] * 3.0

    class Tok:
        def encode(self, text, add_special_tokens=False):
            return [7, 9]

    emb = Scaled()
    rows = init_from_text("x", 3, Tok(), emb)
    assert torch.equal(rows, emb.weight.detach()[[7, 9, 7]] * 3.0)
    sampled = init_from_vocab(5, emb, torch.Generator().manual_seed(0))
    ids = torch.randint(0, 50, (5,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(sampled, emb.weight.detach()[ids] * 3.0)

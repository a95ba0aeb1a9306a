"""Tests of the prompt-learning model: embedding substitution, frozen base model, loss, precision, learning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from promptray.platform.data.batching import collate
from promptray.platform.data.dataset import Example, build_examples
from promptray.platform.data.templates import TaskTemplate
from promptray.platform.model.attention import DECODE_ATTENTION
from promptray.platform.model.prompt_encoder import PromptBank, PromptEncoder, init_random
from promptray.platform.model.prompt_model import PromptLearningModel

from mixed_tasks import MODELS, TEMPLATE_A, TEMPLATE_B

RECORDS = [
    {"taskname": "a", "q": "What colour is the sky?", "answer": " blue"},
    {"taskname": "b", "q": "A cat sat on the mat.", "answer": " mat"},
    {"taskname": "a", "q": "Two plus two?", "answer": " four and nothing else"},
    {"taskname": "b", "q": "Paris is the capital of France, a country in Europe.", "answer": " France"},
]


def examples(tokenizer, records=RECORDS, **kw):
    exs, stats = build_examples(records, [TEMPLATE_A, TEMPLATE_B], tokenizer, 128, **kw)
    assert len(exs) == len(records)
    return exs


def make_bank(hidden: int, frozen_b: bool = False, std: float = 1.0) -> PromptBank:
    gen = torch.Generator().manual_seed(7)
    bank = PromptBank(hidden)
    bank.add_tuned("a", torch.randn(3, hidden, generator=gen) * std)
    if frozen_b:
        bank.add_frozen("b", torch.randn(5, hidden, generator=gen) * std)
    else:
        bank.add_tuned("b", torch.randn(5, hidden, generator=gen) * std)
    return bank


def reference_embeddings(lm, bank: PromptBank, batch) -> torch.Tensor:
    """Input embeddings built position by position, without `PromptLearningModel.embed`."""
    with torch.no_grad():  # the embedding module: some models (Gemma) scale its rows
        vocab = lm.get_input_embeddings()(torch.arange(lm.get_input_embeddings().weight.shape[0]))
    B, T = batch.input_ids.shape
    rows = []
    for i in range(B):
        prompt = bank.get(batch.tasknames[i]).detach()
        rows.append(torch.stack([prompt[v].to(vocab.dtype) if v >= 0 else vocab[t]
                                 for t, v in zip(batch.input_ids[i].tolist(), batch.virtual_ids[i].tolist())]))
    return torch.stack(rows)  # (B, T, H)


def reference_loss(lm, emb: torch.Tensor, batch) -> tuple[torch.Tensor, int]:
    """Sum of shifted token cross-entropies over loss-mask targets, from the LM's full forward."""
    logits = lm(inputs_embeds=emb, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                use_cache=False).logits.float()  # (B, T, V)
    targets = batch.loss_mask[:, 1:]
    per_token = F.cross_entropy(logits[:, :-1].transpose(1, 2), batch.input_ids[:, 1:], reduction="none")
    return per_token[targets].sum(), int(targets.sum())


# ----------------------------------------------------------------------------- embedding substitution

@pytest.mark.parametrize("fixture", MODELS)
def test_embed_places_task_rows_at_virtual_positions(fixture, request):
    lm, tokenizer = request.getfixturevalue(fixture)
    hidden = lm.get_input_embeddings().weight.shape[1]
    model = PromptLearningModel(lm, make_bank(hidden, frozen_b=True))
    exs = examples(tokenizer)
    batch = collate(exs, tokenizer.pad_token_id)
    # the batch really mixes 3 and 5 virtual tokens, with task b's split in the middle of the text
    assert [int((batch.virtual_ids[i] >= 0).sum()) for i in range(4)] == [3, 5, 3, 5]
    vb = exs[1].virtual_ids
    assert vb[:2] == [0, 1] and [v for v in vb[2:] if v >= 0] == [2, 3, 4] and vb[2] == -1

    emb = model.embed(batch.input_ids, batch.virtual_ids, batch.tasknames)
    vocab = lm.get_input_embeddings().weight
    assert emb.shape == (*batch.input_ids.shape, hidden)
    for i, task in enumerate(batch.tasknames):
        prompt = model.bank.get(task)
        for t in range(batch.input_ids.shape[1]):
            v = int(batch.virtual_ids[i, t])
            expected = prompt[v] if v >= 0 else vocab[batch.input_ids[i, t]]
            assert torch.equal(emb[i, t], expected), (i, t, v)
    assert torch.equal(emb, reference_embeddings(lm, model.bank, batch))

    # gradient flows to exactly the rows used
    emb.sum().backward()
    assert model.bank.tuned[0].grad is not None
    assert torch.equal(model.bank.tuned[0].grad, torch.full((3, hidden), 2.0))  # two task-a examples


def test_embed_without_virtual_positions_is_plain_lookup(tiny_gpt2):
    lm, tokenizer = tiny_gpt2
    model = PromptLearningModel(lm, make_bank(32))
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    emb = model.embed(ids, torch.full_like(ids, -1), ["a", "b"])
    assert torch.equal(emb, lm.get_input_embeddings()(ids))


# ----------------------------------------------------------------------------- frozen base model

def _train_steps(model: PromptLearningModel, batch, steps: int = 3, lr: float = 1e-2) -> list[float]:
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss_sum, n = model.loss(batch)
        loss = loss_sum / n
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("fixture", MODELS)
def test_base_model_frozen_prompts_train(fixture, request):
    lm, tokenizer = request.getfixturevalue(fixture)
    hidden = lm.get_input_embeddings().weight.shape[1]
    model = PromptLearningModel(lm, make_bank(hidden))
    assert all(not p.requires_grad for p in lm.parameters())
    trainable = model.trainable_parameters()
    assert {id(p) for p in trainable} == {id(p) for p in model.bank.parameters()}
    assert model.num_parameters() == (3 + 5) * hidden
    base = {k: v.clone() for k, v in lm.state_dict().items()}
    prompts = [p.detach().clone() for p in model.bank.tuned]

    _train_steps(model, collate(examples(tokenizer), tokenizer.pad_token_id))
    assert not lm.training  # the frozen LM stays in eval mode (no dropout) while the model trains
    after = lm.state_dict()
    assert after.keys() == base.keys()
    for k, v in base.items():
        assert torch.equal(after[k], v), k
    assert all(p.grad is None for p in lm.parameters())
    for before, p in zip(prompts, model.bank.tuned):
        assert not torch.equal(before, p.detach())


@pytest.mark.parametrize("fixture", MODELS)
def test_lm_finetune_changes_base_weights(fixture, request):
    lm, tokenizer = request.getfixturevalue(fixture)
    hidden = lm.get_input_embeddings().weight.shape[1]
    model = PromptLearningModel(lm, make_bank(hidden), lm_finetune=True)
    assert all(p.requires_grad for p in lm.parameters())
    assert model.num_parameters() == sum(p.numel() for p in lm.parameters()) + 8 * hidden
    base = {k: v.clone() for k, v in lm.named_parameters()}
    _train_steps(model, collate(examples(tokenizer), tokenizer.pad_token_id), steps=2, lr=1e-3)
    changed = [k for k, v in lm.named_parameters() if not torch.equal(v.detach(), base[k])]
    assert len(changed) == len(base)  # every weight takes part in the loss and moves
    assert lm.get_input_embeddings().weight.dtype == torch.float32


@pytest.mark.parametrize("fixture", MODELS)
def test_frozen_table_task_bit_identical_after_training_another(fixture, request):
    lm, tokenizer = request.getfixturevalue(fixture)
    hidden = lm.get_input_embeddings().weight.shape[1]
    model = PromptLearningModel(lm, make_bank(hidden, frozen_b=True))
    frozen_before = model.bank.get("b").clone()
    tuned_before = model.bank.get("a").detach().clone()
    batch = collate(examples(tokenizer), tokenizer.pad_token_id)
    assert sorted(set(batch.tasknames)) == ["a", "b"]
    emb_before = model.embed(batch.input_ids, batch.virtual_ids, batch.tasknames).detach()

    _train_steps(model, batch, steps=3)
    assert torch.equal(model.bank.get("b"), frozen_before)
    assert not model.bank.get("b").requires_grad
    assert not torch.equal(model.bank.get("a").detach(), tuned_before)
    emb_after = model.embed(batch.input_ids, batch.virtual_ids, batch.tasknames).detach()
    b_rows = torch.tensor([t == "b" for t in batch.tasknames])
    assert torch.equal(emb_after[b_rows], emb_before[b_rows])
    assert not torch.equal(emb_after[~b_rows], emb_before[~b_rows])
    assert model.bank.export(["b"])["b"].equal(frozen_before)


# ----------------------------------------------------------------------------- loss

@pytest.mark.parametrize("fixture", MODELS)
def test_loss_matches_full_forward_reference(fixture, request):
    lm, tokenizer = request.getfixturevalue(fixture)
    hidden = lm.get_input_embeddings().weight.shape[1]
    model = PromptLearningModel(lm, make_bank(hidden, frozen_b=True))
    exs = examples(tokenizer)
    batch = collate(exs, tokenizer.pad_token_id)
    loss_sum, n = model.loss(batch)
    assert n == int(batch.loss_mask[:, 1:].sum())
    # answer-only loss for task a (answer tokens only), whole text after the first virtual row for task b
    assert int(batch.loss_mask[0].sum()) == len(tokenizer.encode(" blue")) + 1  # + EOS
    assert loss_sum.dtype == torch.float32 and loss_sum.requires_grad

    with torch.no_grad():
        ref_sum, ref_n = reference_loss(lm, reference_embeddings(lm, model.bank, batch), batch)
    assert ref_n == n
    value = float(loss_sum.detach())
    assert abs(value / n - float(ref_sum) / n) < 1e-5
    assert value == pytest.approx(float(ref_sum), rel=1e-6)

    # the full-forward path (used for models with scaled logits) gives the same value
    model._backbone = None
    full_sum, full_n = model.loss(batch)
    assert full_n == n and abs(float(full_sum.detach()) / n - float(ref_sum) / n) < 1e-5

    # padding does not leak: the batch loss is the sum of per-example losses
    singles = [model.loss(collate([e], tokenizer.pad_token_id)) for e in exs]
    assert sum(k for _, k in singles) == n
    assert float(sum(s.detach() for s, _ in singles)) == pytest.approx(value, rel=1e-5)


@pytest.mark.parametrize("fixture", MODELS)
def test_bf16_casts_lm_and_keeps_prompts_float32(fixture, request):
    lm, tokenizer = request.getfixturevalue(fixture)
    hidden = lm.get_input_embeddings().weight.shape[1]
    bank = make_bank(hidden, std=0.05)
    batch = collate(examples(tokenizer), tokenizer.pad_token_id)
    fp32_sum, n = PromptLearningModel(lm, bank).loss(batch)
    assert lm.config._attn_implementation == "sdpa"

    model = PromptLearningModel(lm, bank, precision="bf16")
    model.train()
    assert lm.config._attn_implementation == "eager"  # faster than SDPA's backward in bf16 on the CPU
    model.eval()
    assert lm.config._attn_implementation == DECODE_ATTENTION and not lm.training  # decodes faster
    model.train()
    assert all(p.dtype == torch.bfloat16 for p in lm.parameters())
    assert model.compute_dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in bank.parameters())
    bf16_sum, bf16_n = model.loss(batch)
    assert bf16_n == n and bf16_sum.dtype == torch.float32
    assert torch.isfinite(bf16_sum)
    assert float(bf16_sum.detach()) / n == pytest.approx(float(fp32_sum.detach()) / n, rel=2e-2)

    bf16_sum.backward()
    for p in bank.parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
        assert float(p.grad.abs().sum()) > 0


def test_train_attention_choices_for_bf16_on_the_cpu(tiny_llama):
    lm, tokenizer = tiny_llama
    batch = collate(examples(tokenizer), tokenizer.pad_token_id)
    bank = make_bank(32, std=0.05)
    fp32 = float(PromptLearningModel(lm, bank).loss(batch)[0].detach())
    model = PromptLearningModel(lm, bank, precision="bf16")
    flash_on = []  # SDPA's flash kernel allowed during each forward of the frozen model?
    attention = lm.model.layers[0].self_attn
    attention.register_forward_pre_hook(lambda *_: flash_on.append(torch.backends.cuda.flash_sdp_enabled()))
    losses = {}
    for kind in ("eager", "math", "sdpa"):
        model.set_train_attention(kind)
        model.train()
        assert lm.config._attn_implementation == ("eager" if kind == "eager" else "sdpa")
        flash_on.clear()
        losses[kind] = float(model.loss(batch)[0].detach())
        assert flash_on and all(on == (kind != "math") for on in flash_on)  # math: flash off while training
        model.eval()
        assert lm.config._attn_implementation == DECODE_ATTENTION  # inference: whatever the training choice
        flash_on.clear()
        model.loss(batch)
        assert flash_on and all(flash_on)
    assert losses["math"] == pytest.approx(fp32, rel=2e-2) and losses["sdpa"] == pytest.approx(fp32, rel=2e-2)
    with pytest.raises(ValueError, match="train attention 'flash'"):
        model.set_train_attention("flash")


def test_bf16_with_lm_finetune_keeps_fp32_weights(tiny_llama):
    lm, tokenizer = tiny_llama
    model = PromptLearningModel(lm, make_bank(32, std=0.05), precision="bf16", lm_finetune=True)
    assert all(p.dtype == torch.float32 for p in lm.parameters())
    loss_sum, n = model.loss(collate(examples(tokenizer), tokenizer.pad_token_id))
    assert torch.isfinite(loss_sum) and n > 0
    loss_sum.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in lm.parameters())


# ----------------------------------------------------------------------------- learning

def test_loss_goes_down_on_a_learnable_task(tiny_gpt2):
    """A 5-token prompt learns to make the model answer " yes" after every review."""
    from transformers import GPT2Config, GPT2LMHeadModel

    _, tokenizer = tiny_gpt2
    torch.manual_seed(0)
    # large initial weights, so that prompts can steer the tiny random model
    lm = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=len(tokenizer),
                                    initializer_range=0.5)).eval()
    template = TaskTemplate(taskname="yes", prompt_template="<|VIRTUAL_PROMPT_0|> Review: {text} Sentiment:{label}",
                            total_virtual_tokens=5, virtual_token_splits=[5], answer_only_loss=True,
                            answer_field="label")
    words = "good bad fine awful great terrible nice poor".split()
    records = [{"taskname": "yes", "text": f"the movie was {w}", "label": " yes"} for w in words]
    exs, _ = build_examples(records, [template], tokenizer, 64, add_eos=False)
    batch = collate(exs, tokenizer.pad_token_id)
    assert int(batch.loss_mask.sum()) == len(words)  # one target per record: " yes"

    bank = PromptBank(32)
    bank.add_tuned("yes", init_random(5, lm.get_input_embeddings().weight, torch.Generator().manual_seed(0)))
    model = PromptLearningModel(lm, bank)
    losses = _train_steps(model, batch, steps=40, lr=0.1)
    # measured: about 12.7 -> 4.5
    assert losses[-1] < 0.6 * losses[0]
    assert min(losses[-5:]) < losses[0] - 4.0


def test_p_tuning_encoder_trains_through_model(tiny_gpt2):
    lm, tokenizer = tiny_gpt2
    torch.manual_seed(0)
    bank = PromptBank(32)
    bank.set_encoder(PromptEncoder({"a": 3, "b": 5}, 32, "lstm", num_layers=2, dropout=0.1))
    model = PromptLearningModel(lm, bank)
    base = {k: v.clone() for k, v in lm.state_dict().items()}
    before = {k: v.clone() for k, v in bank.export().items()}
    _train_steps(model, collate(examples(tokenizer), tokenizer.pad_token_id), steps=2)
    assert all(torch.equal(lm.state_dict()[k], v) for k, v in base.items())
    after = bank.export()
    assert set(after) == {"a", "b"} and after["a"].shape == (3, 32) and after["b"].shape == (5, 32)
    assert all(not torch.equal(before[k], after[k]) for k in after)


@pytest.mark.parametrize("arch", ["granite", "gemma2"])
def test_loss_and_step_with_scaled_logits(arch):
    """Models whose head does more than `lm_head(hidden)` (Granite divides by logits_scaling, Gemma-2
    soft-caps) must give the full forward's logits."""
    torch.manual_seed(0)
    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=64, vocab_size=300, max_position_embeddings=64)
    if arch == "granite":
        from transformers import GraniteConfig, GraniteForCausalLM

        lm = GraniteForCausalLM(GraniteConfig(logits_scaling=4.0, **common)).eval()
    else:
        from transformers import Gemma2Config, Gemma2ForCausalLM

        lm = Gemma2ForCausalLM(Gemma2Config(head_dim=8, final_logit_softcapping=0.5, **common)).eval()
    bank = PromptBank(32)
    bank.add_tuned("a", torch.randn(3, 32))
    model = PromptLearningModel(lm, bank)
    exs = [Example("a", [0, 0, 0, 5, 6, 7, 8], [0, 1, 2, -1, -1, -1, -1], [0, 0, 0, 0, 1, 1, 1]),
           Example("a", [0, 0, 0, 9, 10, 11, 12, 13, 14], [0, 1, 2, -1, -1, -1, -1, -1, -1],
                   [0, 0, 0, 0, 0, 0, 1, 1, 1])]
    batch = collate(exs, 0)
    loss_sum, n = model.loss(batch)
    with torch.no_grad():
        ref_sum, ref_n = reference_loss(lm, reference_embeddings(lm, bank, batch), batch)
        assert n == ref_n == 6
        assert abs(float(loss_sum.detach()) - float(ref_sum)) / n < 1e-5

        left = collate(exs, 0, side="left")
        emb = model.embed(left.input_ids, left.virtual_ids, left.tasknames)
        logits, _ = model.step(emb, left.attention_mask, left.position_ids)
        ref = lm(inputs_embeds=emb, attention_mask=left.attention_mask, position_ids=left.position_ids).logits
        assert torch.allclose(logits, ref[:, -1].float(), atol=1e-5)


@pytest.mark.parametrize("layout", ["plain", "packed", "split"])
def test_task_losses_split_one_forward_by_task_and_each_reaches_only_its_prompt(layout, tiny_llama):
    lm, tokenizer = tiny_llama
    exs = examples(tokenizer) * 2  # two rows of each task per prefix: every layout applies
    model = PromptLearningModel(lm, make_bank(32, std=0.05))
    model.share_prefix, model.fast_paths = layout != "plain", [layout] if layout != "plain" else []
    mixed = collate(exs, tokenizer.pad_token_id)
    per_task = model.task_losses(mixed)
    assert set(per_task) == {"a", "b"}
    for task, (loss_sum, n) in per_task.items():
        alone_sum, alone_n = model.loss(collate([e for e in exs if e.taskname == task], tokenizer.pad_token_id))
        assert n == alone_n and float(loss_sum.detach()) == pytest.approx(float(alone_sum.detach()), rel=1e-5)
    total, n = model.loss(mixed)
    assert n == sum(k for _, k in per_task.values())
    assert float(total.detach()) == pytest.approx(sum(float(s.detach()) for s, _ in per_task.values()), rel=1e-5)
    if layout != "plain":
        checked = {"split": "split+outer"}.get(layout, layout)  # duplicated records: nested split prefixes
        assert model.fast_paths == [layout] and checked in model._verified  # the layout ran and agreed
    per_task["a"][0].backward()
    assert float(model.bank.get("a").grad.abs().sum()) > 0
    assert model.bank.get("b").grad is None or float(model.bank.get("b").grad.abs().sum()) == 0

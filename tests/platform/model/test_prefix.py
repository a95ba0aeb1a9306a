"""Shared-prefix batches: each task's constant prompt start runs once, with the full batch's loss and gradients."""

from __future__ import annotations

import pytest
import torch

import promptray.platform.model.prefix as prefix_mod
from promptray.platform.data.batching import collate, to_device
from promptray.platform.data.dataset import build_examples
from promptray.platform.model.prefix import pack_batch, shared_prefixes, split_shared_prefix
from promptray.platform.model.prompt_model import PromptLearningModel

from mixed_tasks import MODELS, PREFIX_RECORDS, TEMPLATE_A, TEMPLATE_B, TEMPLATE_C, bank_for, batch_of, loss_and_grads


def test_split_finds_each_tasks_constant_start(tiny_gpt2, always_split):
    _, tokenizer = tiny_gpt2
    batch = batch_of(tokenizer)
    split = split_shared_prefix(batch)
    assert split.prefix_tasks == ["a", "c"]  # b appears once; nothing to share
    expected = [3 + len(tokenizer.encode(" Question:")), 4 + len(tokenizer.encode(" Review:"))]
    assert split.prefix_mask.sum(-1).tolist() == expected
    assert split.row_group.tolist() == [0, 1, 0, 0, 1, 0, 1]
    assert split.cache_mask.sum(-1).tolist() == [expected[0], expected[1], expected[0], 0, expected[1],
                                                 expected[0], expected[1]]
    # every row's remainder + its share of the prefix is the row itself, tokens, positions and targets alike
    lengths = batch.attention_mask.sum(-1)
    for i in range(len(batch)):
        p, n = int(split.cache_mask[i].sum()), int(lengths[i])
        assert split.input_ids[i, :n - p].tolist() == batch.input_ids[i, p:n].tolist()
        assert split.position_ids[i, :n - p].tolist() == list(range(p, n))
        assert split.loss_mask[i].sum() == batch.loss_mask[i].sum()
    # the prefix rows hold the task's virtual rows 0.. then the literal text
    assert split.prefix_virtual[1, :6].tolist() == [0, 1, 2, 3, -1, -1]


def test_layouts_decline_when_nothing_is_gained(tiny_gpt2, monkeypatch):
    _, tokenizer = tiny_gpt2
    batch = batch_of(tokenizer)
    assert split_shared_prefix(batch) is None  # the lone full-length row b keeps every remainder long
    monkeypatch.setattr(prefix_mod, "MAX_PACKED", 20)
    assert pack_batch(batch) is None  # too long for one dense mask
    one_row = batch_of(tokenizer, [r for r in PREFIX_RECORDS if r["taskname"] == "c"][:1])
    left = collate(build_examples(PREFIX_RECORDS[:3], [TEMPLATE_A, TEMPLATE_C], tokenizer, 128)[0], 50256, side="left")
    for b in (one_row, left):  # nothing to share; generation batches (left-padded) are never split
        assert shared_prefixes(b) == [] and pack_batch(b) is None and split_shared_prefix(b) is None


def test_pack_puts_each_prefix_once_and_keeps_rows_apart(tiny_gpt2):
    _, tokenizer = tiny_gpt2
    batch = batch_of(tokenizer)
    packed = pack_batch(batch)
    shared = {g.task: g.length for g in shared_prefixes(batch)}
    assert shared == {"a": 3 + len(tokenizer.encode(" Question:")), "c": 4 + len(tokenizer.encode(" Review:"))}
    # each row runs from its task's prefix end through the column that predicts its last target (its EOS
    # is a target, never an input); row b (alone) runs from column 0
    ends = [int(m[1:].nonzero()[-1]) + 1 for m in batch.loss_mask]
    starts = [shared.get(n, 0) for n in batch.tasknames]
    M = sum(shared.values()) + sum(e - s for s, e in zip(starts, ends))
    assert packed.input_ids.shape == (1, M) and packed.allowed.shape == (M, M)
    assert int(packed.targets.sum()) == len(packed.labels) == int(batch.loss_mask[:, 1:].sum())
    assert sorted(packed.labels.tolist()) == sorted(batch.input_ids[:, 1:][batch.loss_mask[:, 1:]].tolist())
    # row 1 (task c) starts after the two prefixes and row 0: it sees c's prefix and itself, causally
    first = shared["a"] + shared["c"] + (ends[0] - starts[0])
    view = packed.allowed[first + 2]
    assert view.nonzero().flatten().tolist() == (list(range(shared["a"], shared["a"] + shared["c"]))
                                                 + [first, first + 1, first + 2])
    assert packed.position_ids[0, first:first + 3].tolist() == [shared["c"], shared["c"] + 1, shared["c"] + 2]
    assert packed.tasknames[first] == "c" and packed.tasknames[0] == "a"


@pytest.mark.parametrize("records", ["distinct", "ranking"])
@pytest.mark.parametrize("kind", ["packed", "split"])
@pytest.mark.parametrize("fixture", MODELS)
def test_layouts_give_the_full_batch_loss_and_gradients(fixture, kind, records, request, always_split):
    """Distinct records (per-task groups) and ranking records (one record's label rows: a group per record,
    with a lone row of task b in no group) give the plain forward's loss and gradients."""
    lm, tokenizer = request.getfixturevalue(fixture)
    model = PromptLearningModel(lm, bank_for(lm.get_input_embeddings().weight.shape[1]))
    model.fast_paths = [kind]
    if records == "distinct":
        batch, checked = batch_of(tokenizer), kind
    else:
        batch = ranking_batch(tokenizer, SIX_LABELS, ["Loved it.", "Not for me."], extra=PREFIX_RECORDS)
        assert len(shared_prefixes(batch)) == 4
        checked = {"split": "split+outer"}.get(kind, kind)  # record prompts on their task's start: checked alone
    shared, n, g_shared = loss_and_grads(model, batch, share=True)
    assert model.fast_paths == [kind] and model._verified == {checked}  # the layout ran and agreed
    full, n_full, g_full = loss_and_grads(model, batch, share=False)
    assert n == n_full == int(batch.loss_mask[:, 1:].sum())
    assert shared == pytest.approx(full, rel=1e-6)
    for a, b in zip(g_shared, g_full):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)
    if records == "distinct":
        assert all(float(g.abs().sum()) > 0 for g in g_shared)  # every task's prompt got a gradient

    model._backbone = None  # the full-forward path (models that scale their logits) takes the layout too
    shared_full_path, _, _ = loss_and_grads(model, batch, share=True)
    assert shared_full_path == pytest.approx(full, rel=1e-6)


@pytest.mark.parametrize("kind", ["packed", "split"])
def test_layouts_in_bf16_match_within_bf16_rounding(tiny_llama, kind, always_split):
    lm, tokenizer = tiny_llama
    model = PromptLearningModel(lm, bank_for(32), precision="bf16")
    model.fast_paths = [kind]
    batch = batch_of(tokenizer)
    shared, _, g_shared = loss_and_grads(model, batch, share=True)
    assert model._verified == {kind}
    full, _, g_full = loss_and_grads(model, batch, share=False)
    assert shared == pytest.approx(full, rel=2e-2)
    for a, b in zip(g_shared, g_full):
        assert float((a - b).norm() / b.norm()) < 5e-2


def test_a_layout_the_model_does_not_honour_is_switched_off(tiny_gpt2, monkeypatch, caplog):
    lm, tokenizer = tiny_gpt2
    model = PromptLearningModel(lm, bank_for(32))
    real = PromptLearningModel._terms_packed

    def wrong(self, p):  # a model ignoring the mask
        t = real(self, p)
        t.logits = t.logits * 1.5
        return t
    monkeypatch.setattr(PromptLearningModel, "_terms_packed", wrong)
    batch = batch_of(tokenizer)
    value, _, _ = loss_and_grads(model, batch, share=True)
    assert model.fast_paths == ["split"] and "packed" not in model._verified
    assert "switched off" in caplog.text
    plain, _, _ = loss_and_grads(model, batch, share=False)
    assert value == pytest.approx(plain, rel=1e-6)  # the batch still got its true loss


def test_sliding_window_models_fall_back_to_the_full_forward(tmp_path, tiny_llama, always_split):
    from transformers import MistralConfig, MistralForCausalLM

    _, tokenizer = tiny_llama
    torch.manual_seed(0)
    lm = MistralForCausalLM(MistralConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                          num_key_value_heads=2, intermediate_size=64, vocab_size=len(tokenizer),
                                          sliding_window=4, max_position_embeddings=256))
    model = PromptLearningModel(lm, bank_for(32))
    assert model.fast_paths == ["split"]  # a packed mask would override the window
    batch = batch_of(tokenizer)
    shared, _, _ = loss_and_grads(model, batch, share=True)
    assert model.fast_paths == []  # its cache drops old positions: the split is switched off on the first batch
    full, _, _ = loss_and_grads(model, batch, share=False)
    assert shared == full


def test_layouts_are_planned_on_the_cpu_and_moved_to_the_batchs_device(tiny_gpt2, always_split):
    _, tokenizer = tiny_gpt2
    nested = split_shared_prefix(ranking_batch(tokenizer, SIX_LABELS))
    assert to_device(nested, torch.device("meta")).outer.prefix_ids.is_meta  # the prefix rows' own split too
    for obj in (batch_of(tokenizer), pack_batch(batch_of(tokenizer)), split_shared_prefix(batch_of(tokenizer))):
        moved = to_device(obj, torch.device("meta"))  # stands in for an accelerator here
        tensors = {k: v for k, v in vars(moved).items() if isinstance(v, torch.Tensor)}
        assert tensors and all(v.is_meta and v.shape == getattr(obj, k).shape for k, v in tensors.items())
        assert moved.tasknames == obj.tasknames  # what is not a tensor stays as it was
        assert to_device(obj, torch.device("cpu")) is obj and to_device(obj, None) is obj  # no copy
    assert to_device(None, torch.device("meta")) is None


# ----------------------------------------------------------------------------- rows that share their prompt

REVIEWS = ["A warm, funny film.", "Dull and far too long; I left early.", "Fine."]
TWO_LABELS = [" positive", " negative"]
SIX_LABELS = [" abbreviation", " description", " entity", " person", " location", " a number, or so"]


def ranking_batch(tokenizer, labels, texts=REVIEWS, add_eos=True, extra=()):
    """Each review with each label as its answer (record r, label j: row r * L + j), then `extra` records."""
    recs = [{"taskname": "c", "text": t, "label": lab} for t in texts for lab in labels] + list(extra)
    exs, _ = build_examples(recs, [TEMPLATE_A, TEMPLATE_B, TEMPLATE_C], tokenizer, 128, add_eos=add_eos)
    assert len(exs) == len(recs)
    return collate(exs, tokenizer.pad_token_id)


def test_a_ranking_batch_runs_each_records_prompt_once_and_the_answers_as_remainders(tiny_gpt2):
    _, tokenizer = tiny_gpt2
    assert len(tokenizer.encode(SIX_LABELS[-1])) > 1  # a multi-token label
    batch = ranking_batch(tokenizer, SIX_LABELS)
    firsts = [int(m.nonzero()[0]) for m in batch.loss_mask]  # the first answer token of each row
    groups = shared_prefixes(batch)
    assert [(g.task, g.rows) for g in groups] == [("c", tuple(range(6 * r, 6 * r + 6))) for r in range(3)]
    assert [g.length for g in groups] == [firsts[6 * r] - 1 for r in range(3)]  # the whole prompt but its last
    split = split_shared_prefix(batch)  # under the default cost rule: it saves work
    assert split.prefix_tasks == ["c"] * 3 and split.row_group.tolist() == [r for r in range(3) for _ in range(6)]
    # the three prompts share their task's start: it runs once (outer), then each prompt's rest against it
    start = 4 + len(tokenizer.encode(" Review:"))
    outer = split.outer
    assert outer.prefix_tasks == ["c"] and outer.prefix_mask.sum(-1).tolist() == [start]
    assert outer.row_group.tolist() == [0, 0, 0] and outer.cache_mask.sum(-1).tolist() == [start] * 3
    for k, g in enumerate(groups):  # each prompt's rest continues its own positions
        n = g.length - start
        assert outer.input_ids[k, :n].tolist() == batch.input_ids[g.rows[0], start:g.length].tolist()
        assert outer.position_ids[k, :n].tolist() == list(range(start, g.length))
        assert int(outer.attention_mask[k].sum()) == g.length
    lengths = batch.attention_mask.sum(-1)
    eos = tokenizer.eos_token_id
    for i in range(len(batch)):  # remainder: the prompt's last token (it predicts the answer), answer, EOS
        p, n = int(split.cache_mask[i].sum()), int(lengths[i])  # its prompt's slots: the start and the rest
        assert p == firsts[i] - 1
        assert split.cache_mask[i].tolist() == outer.attention_mask[i // 6].tolist()
        answer = tokenizer.encode(SIX_LABELS[i % 6])
        assert split.input_ids[i, :n - p].tolist() == [int(batch.input_ids[i, p])] + answer + [eos]
        assert split.loss_mask[i, :n - p].tolist() == [False] + [True] * (len(answer) + 1)
        assert split.position_ids[i, :n - p].tolist() == list(range(p, n))
    # the per-task grouping (the old one) shares only the task's start: virtual tokens and " Review:"
    by_task = shared_prefixes(batch, group_by="task")
    assert [(g.rows, g.length) for g in by_task] == [(tuple(range(18)), start)]
    assert split_shared_prefix(batch, group_by="task").outer is None
    with pytest.raises(ValueError, match="group_by 'record'"):
        shared_prefixes(batch, group_by="record")


def test_distinct_records_keep_the_per_task_groups_and_leftover_rows_share_their_tasks_start(tiny_gpt2,
                                                                                            always_split):
    _, tokenizer = tiny_gpt2
    batch = batch_of(tokenizer)  # a training batch: every record once
    a, c = 3 + len(tokenizer.encode(" Question:")), 4 + len(tokenizer.encode(" Review:"))
    assert [(g.task, g.rows, g.length) for g in shared_prefixes(batch)] == [("a", (0, 2, 5), a), ("c", (1, 4, 6), c)]
    assert shared_prefixes(batch) == shared_prefixes(batch, group_by="task")
    # one record's ranking rows, then two distinct records of the same task and one of another
    extra = [r for r in PREFIX_RECORDS if r["taskname"] == "c"][1:] + PREFIX_RECORDS[:1]
    mixed = ranking_batch(tokenizer, TWO_LABELS, REVIEWS[:1], extra=extra)
    first = int(mixed.loss_mask[0].nonzero()[0])
    assert [(g.task, g.rows, g.length) for g in shared_prefixes(mixed)] == [("c", (0, 1), first - 1),
                                                                            ("c", (2, 3), c)]
    # the lone row of task a is in no group; its row reads no prefix
    split = split_shared_prefix(mixed)
    assert split.cache_mask.sum(-1).tolist() == [first - 1, first - 1, c, c, 0]


@pytest.mark.parametrize("add_eos", [True, False])
@pytest.mark.parametrize("labels", [TWO_LABELS, SIX_LABELS], ids=["2 labels", "6 labels"])
@pytest.mark.parametrize("fixture", MODELS)
def test_answer_scores_with_one_prompt_per_record_equal_the_plain_forward(fixture, labels, add_eos, request):
    lm, tokenizer = request.getfixturevalue(fixture)
    model = PromptLearningModel(lm, bank_for(lm.get_input_embeddings().weight.shape[1])).eval()
    batch = ranking_batch(tokenizer, labels, add_eos=add_eos)
    assert len(split_shared_prefix(batch).prefix_tasks) == len(REVIEWS)  # one prefix per record, default cost
    shared = model.target_logprobs(batch)  # (B,)
    assert model._verified == {"split+outer"}  # the (nested) layout ran and agreed with the plain forward
    model.share_prefix = False
    plain = model.target_logprobs(batch)
    assert torch.allclose(shared, plain, atol=1e-5, rtol=0)
    assert len(set(round(float(x), 4) for x in plain)) == len(plain)  # real, distinct scores


@pytest.mark.parametrize("fixture", MODELS)
def test_a_scoring_pass_runs_the_tasks_start_once_over_its_batches(fixture, request):
    from promptray.platform.generation.inference import answer_logprobs

    lm, tokenizer = request.getfixturevalue(fixture)
    model = PromptLearningModel(lm, bank_for(lm.get_input_embeddings().weight.shape[1])).eval()
    texts = ["A warm, funny film.", "Dull and far too long.", "Fine.", "Never again!", "Two thumbs up.", "Meh."]
    recs = [{"taskname": "c", "text": t, "label": lab} for t in texts for lab in TWO_LABELS]
    examples, _ = build_examples(recs, [TEMPLATE_C], tokenizer, 128)
    answer_logprobs(model, examples, tokenizer.pad_token_id, batch_size=4)  # the layout's one check runs here
    assert model._verified == {"split+outer"}
    runs = []
    run = model._cache_of_run
    model._cache_of_run = lambda emb, *a: runs.append(emb.shape[:2]) or run(emb, *a)
    fast = answer_logprobs(model, examples, tokenizer.pad_token_id, batch_size=4)  # 3 batches of 2 records
    start = 4 + len(tokenizer.encode(" Review:"))
    assert runs.count((1, start)) == 1  # the task's start: once, reused by the 2nd and 3rd batch
    assert len(runs) == 1 + 3  # and each batch's two record prompts against it
    model.share_prefix = False
    plain = answer_logprobs(model, examples, tokenizer.pad_token_id, batch_size=4)
    assert fast == pytest.approx(plain, abs=1e-5)
    assert len({round(x, 4) for x in plain}) == len(plain)

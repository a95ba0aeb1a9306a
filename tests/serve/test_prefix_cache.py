"""The serving prefix cache: outputs with and without it are identical, for mixed-task batches."""

from __future__ import annotations

import pytest
import torch

from promptray.platform.data.dataset import build_examples
from promptray.platform.data.templates import TaskTemplate
from promptray.platform.generation.decode import GenerationParams, generate
from promptray.platform.model.prompt_encoder import PromptBank
from promptray.platform.model.prompt_model import PromptLearningModel
from promptray.serve.prefix_cache import PrefixCache, prefix_tokens, shared_length

TEMPLATES = [
    TaskTemplate(taskname="short", prompt_template="<|VIRTUAL_PROMPT_0|> Review: {text} Sentiment:{label}",
                 total_virtual_tokens=2, virtual_token_splits=[2], answer_field="label"),
    TaskTemplate(taskname="split", prompt_template="<|VIRTUAL_PROMPT_0|> Context and more words<|VIRTUAL_PROMPT_1|>"
                 " Question: {q} Answer:", total_virtual_tokens=7, virtual_token_splits=[3, 4]),
    TaskTemplate(taskname="long", prompt_template="<|VIRTUAL_PROMPT_0|>{q} =", total_virtual_tokens=12,
                 virtual_token_splits=[12]),
    TaskTemplate(taskname="late", prompt_template="{q} <|VIRTUAL_PROMPT_0|> Answer:", total_virtual_tokens=4,
                 virtual_token_splits=[4]),  # a field first: nothing constant to cache
]
RECORDS = [
    {"taskname": "short", "text": "A wonderful, moving film."},
    {"taskname": "split", "q": "Who wrote it?"},
    {"taskname": "long", "q": "Translate: good morning"},
    {"taskname": "late", "q": "Two plus two"},
    {"taskname": "short", "text": "Dull."},
    {"taskname": "long", "q": "x"},
    {"taskname": "split", "q": "Where is the station, and how far is it from the old harbour?"},
]


def setup(lm, tokenizer):
    hidden = lm.get_input_embeddings().weight.shape[1]
    gen = torch.Generator().manual_seed(5)
    bank = PromptBank(hidden)
    for t in TEMPLATES:
        bank.add_frozen(t.taskname, torch.randn(t.total_virtual_tokens, hidden, generator=gen) * 2)
    model = PromptLearningModel(lm, bank).eval()
    cache = PrefixCache(model, tokenizer)
    for t in TEMPLATES:
        cache.add(t.taskname, t)
    examples, _ = build_examples(RECORDS, TEMPLATES, tokenizer, 200, inference=True)
    return model, cache, examples


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])
def test_greedy_with_prefix_cache_equals_without(fixture, request):
    lm, tok = request.getfixturevalue(fixture)
    model, cache, exs = setup(lm, tok)
    lengths = {t.taskname: len(cache.get(t.taskname) or ()) for t in TEMPLATES}
    assert lengths["short"] >= 2 and lengths["split"] > 7 and lengths["long"] == 12 and lengths["late"] == 0
    assert [shared_length(e, cache.get(e.taskname)) for e in exs][:4] == [lengths["short"], lengths["split"], 12, 0]
    params = GenerationParams(max_new_tokens=8, stop_at_eos=False)
    pad, eos = tok.pad_token_id, tok.eos_token_id
    plain = generate(model, exs, params, pad, eos)
    cached = generate(model, exs, params, pad, eos, prefill=cache.prefill)
    assert cached == plain
    assert all(len(o) == 8 for o in plain) and len({tuple(o) for o in plain}) > 2
    alone = [generate(model, [e], params, pad, eos, prefill=cache.prefill)[0] for e in exs]
    assert alone == plain  # a row's output does not depend on its batch


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])
def test_prefill_logits_match_the_plain_pass(fixture, request):
    from promptray.platform.generation.decode import prefill_plain

    lm, tok = request.getfixturevalue(fixture)
    model, cache, exs = setup(lm, tok)
    with torch.no_grad():
        ref, _, _, _ = prefill_plain(model, exs, tok.pad_token_id)  # (B, V)
        got, past, mask, pos = cache.prefill(model, exs, tok.pad_token_id)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    assert mask.shape[1] == past.get_seq_length()  # cache slots + remainder columns, nothing else
    assert pos[:, -1].tolist() == [len(e) - 1 for e in exs]  # each row's last position is its own length - 1


def test_trailing_text_token_is_left_out_and_mismatch_cuts_the_shared_run(tiny_gpt2):
    _, tok = tiny_gpt2
    ids, vids = prefix_tokens(TEMPLATES[0], tok)
    text_ids = tok.encode(" Review:", add_special_tokens=False)
    assert vids == [0, 1] + [-1] * (len(text_ids) - 1) and ids[2:] == text_ids[:-1]
    ids, vids = prefix_tokens(TEMPLATES[2], tok)
    assert vids == list(range(12))  # ends with virtual tokens: nothing left out


def test_sliding_window_model_falls_back_to_the_plain_pass(tiny_gpt2):
    from transformers import MistralConfig, MistralForCausalLM

    _, tok = tiny_gpt2
    torch.manual_seed(0)
    cfg = MistralConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=64, vocab_size=len(tok), max_position_embeddings=256, sliding_window=4)
    model, cache, exs = setup(MistralForCausalLM(cfg), tok)
    assert not cache.enabled and cache.get("long") is None
    params = GenerationParams(max_new_tokens=5, stop_at_eos=False)
    pad, eos = tok.pad_token_id, tok.eos_token_id
    assert generate(model, exs, params, pad, eos, prefill=cache.prefill) == generate(model, exs, params, pad, eos)

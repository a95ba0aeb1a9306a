"""Log-probabilities of prompts and generations, and OpenAI's legacy `logprobs` layout."""

from __future__ import annotations

import pytest
import torch

from promptray.platform.data.dataset import build_examples
from promptray.platform.data.templates import TaskTemplate
from promptray.platform.generation.inference import answer_logprobs
from promptray.platform.generation.logprobs import TokenLogprob, openai_logprobs, prompt_logprobs, text_offsets
from promptray.platform.model.prompt_encoder import PromptBank
from promptray.platform.model.prompt_model import PromptLearningModel

from mixed_tasks import MODELS, TEMPLATE_B

TEXT_FIRST = TaskTemplate(taskname="t", prompt_template="{q} <|VIRTUAL_PROMPT_0|> Answer:{answer}",
                          total_virtual_tokens=2, virtual_token_splits=[2], answer_only_loss=True,
                          answer_field="answer")
RECORDS = [{"taskname": "t", "q": "Is the sky blue?", "answer": " yes"},
           {"taskname": "b", "q": "A cat sat on the mat.", "answer": " no"}]


@pytest.mark.parametrize("fixture", MODELS)
def test_prompt_logprobs_skip_virtual_tokens_and_agree_with_answer_scoring(fixture, request):
    lm, tok = request.getfixturevalue(fixture)
    hidden = lm.get_input_embeddings().weight.shape[1]
    bank = PromptBank(hidden)
    gen = torch.Generator().manual_seed(3)
    bank.add_frozen("t", torch.randn(2, hidden, generator=gen))
    bank.add_frozen("b", torch.randn(5, hidden, generator=gen))
    model = PromptLearningModel(lm, bank).eval()
    exs, _ = build_examples(RECORDS, [TEXT_FIRST, TEMPLATE_B], tok, 128, add_eos=False)  # with the answers
    scores = answer_logprobs(model, exs, tok.pad_token_id)
    for e, score in zip(exs, scores):
        got = prompt_logprobs(model, e, tok.pad_token_id, k=2)
        assert [t for t, _ in got] == [t for t, v in enumerate(e.virtual_ids) if v < 0]  # real tokens only
        assert (got[0][1] is None) == (e.taskname == "t")  # null only for a token at position 0
        assert all(lp.token_id == e.input_ids[t] and len(lp.top) == 2 for t, lp in got[1:])
        answer = sum(lp.logprob for t, lp in got if e.loss_mask[t])
        assert answer == pytest.approx(score, abs=1e-3)


def test_openai_layout_of_multibyte_text(tiny_gpt2):
    _, tok = tiny_gpt2

    def decode(ids):
        return tok.decode(ids, skip_special_tokens=True)

    ids = tok.encode(" héllo wörld ☃!", add_special_tokens=False)
    entries = [None] + [TokenLogprob(t, -1.0 - j, [(ids[0], -0.5)]) for j, t in enumerate(ids[1:])]
    out = openai_logprobs(entries, ids, decode, start=4)
    assert "".join(out["tokens"]) == decode(ids) == " héllo wörld ☃!"
    assert out["text_offset"] == [4 + o for o in text_offsets(ids, decode)]
    assert all(decode(ids)[o - 4:].startswith(t) for o, t in zip(out["text_offset"], out["tokens"]))
    assert out["token_logprobs"] == [None] + [-1.0 - j for j in range(len(ids) - 1)]
    assert out["top_logprobs"][0] is None
    first = decode([ids[0]])
    for j, top in enumerate(out["top_logprobs"][1:]):  # the alternatives plus the chosen token
        assert top == {first: -0.5, decode([ids[j + 1]]): -1.0 - j} or \
            (decode([ids[j + 1]]) == first and top == {first: -0.5})


@pytest.mark.parametrize("fixture", MODELS)
def test_answer_scores_with_a_shared_prompt_start_equal_the_plain_forward(fixture, request):
    """Ranking rows (one per label) of a task share its prompt start: target_logprobs runs it once (the split
    layout) and gets the plain forward's scores."""
    lm, tok = request.getfixturevalue(fixture)
    hidden = lm.get_input_embeddings().weight.shape[1]
    bank = PromptBank(hidden)
    bank.add_frozen("b", torch.randn(5, hidden, generator=torch.Generator().manual_seed(4)))
    records = [{"taskname": "b", "q": q, "answer": a} for q in ("A cat sat on the mat.", "Dogs bark at night.")
               for a in (" yes", " no", " maybe not")]
    template = TaskTemplate(taskname="b", prompt_template="<|VIRTUAL_PROMPT_0|> Context: {q} Answer:{answer}",
                            total_virtual_tokens=5, virtual_token_splits=[5], answer_only_loss=True,
                            answer_field="answer")
    exs, _ = build_examples(records, [template], tok, 128, add_eos=True)
    model = PromptLearningModel(lm, bank).eval()
    shared = answer_logprobs(model, exs, tok.pad_token_id)
    if "split" in model.fast_paths:  # models with a plain growing KV cache
        assert "split+outer" in model._verified  # record prompts on the task's start
    model.share_prefix = False
    plain = answer_logprobs(model, exs, tok.pad_token_id)
    assert shared == pytest.approx(plain, abs=1e-4)
    assert len(set(round(x, 4) for x in plain)) == len(plain)  # real, distinct scores

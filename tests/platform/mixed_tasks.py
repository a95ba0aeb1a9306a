"""Two tasks with different virtual-token counts and marker layouts (a third for shared-prefix batches), their
records, prompt banks and models, shared by the model, generation and CUDA tests."""

from __future__ import annotations

import torch

from promptray.platform.data.batching import collate
from promptray.platform.data.dataset import Example, build_examples
from promptray.platform.data.templates import TaskTemplate
from promptray.platform.model.prompt_encoder import PromptBank
from promptray.platform.model.prompt_model import PromptLearningModel

MODELS = ["tiny_gpt2", "tiny_llama"]

# task "a": 3 virtual tokens at the start, answer-only loss; task "b": 5 virtual tokens split 2 + 3, full loss
TEMPLATE_A = TaskTemplate(taskname="a", prompt_template="<|VIRTUAL_PROMPT_0|> Question: {q} Answer:{answer}",
                          total_virtual_tokens=3, virtual_token_splits=[3], answer_only_loss=True,
                          answer_field="answer")
TEMPLATE_B = TaskTemplate(taskname="b", prompt_template="<|VIRTUAL_PROMPT_0|> Context: {q}<|VIRTUAL_PROMPT_1|> "
                          "Answer:{answer}", total_virtual_tokens=5, virtual_token_splits=[2, 3])
# answer-only loss, 6 virtual tokens split 4 + 2 around the review: the second marker lies in the remainder
TEMPLATE_C = TaskTemplate(taskname="c", prompt_template="<|VIRTUAL_PROMPT_0|> Review: {text}<|VIRTUAL_PROMPT_1|> "
                          "Sentiment:{label}", total_virtual_tokens=6, virtual_token_splits=[4, 2],
                          answer_only_loss=True, answer_field="label")
PREFIX_RECORDS = [
    {"taskname": "a", "q": "What colour is the sky?", "answer": " blue"},
    {"taskname": "c", "text": "A warm, funny film.", "label": " positive"},
    {"taskname": "a", "q": "Two plus two?", "answer": " four"},
    {"taskname": "b", "q": "A cat sat on the mat.", "answer": " mat"},  # full loss, alone: no shared prefix
    {"taskname": "c", "text": "Dull and far too long; I left early.", "label": " negative"},
    {"taskname": "a", "q": "Who wrote Hamlet, the play?", "answer": " Shakespeare"},
    {"taskname": "c", "text": "Fine.", "label": " positive"},
]


def batch_of(tokenizer, records=PREFIX_RECORDS):
    exs, _ = build_examples(records, [TEMPLATE_A, TEMPLATE_B, TEMPLATE_C], tokenizer, 128)
    return collate(exs, tokenizer.pad_token_id)


def bank_for(hidden: int) -> PromptBank:
    gen = torch.Generator().manual_seed(3)
    bank = PromptBank(hidden)
    for name, n in (("a", 3), ("b", 5), ("c", 6)):
        bank.add_tuned(name, torch.randn(n, hidden, generator=gen))
    return bank


def loss_and_grads(model, batch, share: bool):
    model.share_prefix = share
    model.zero_grad(set_to_none=True)
    loss, n = model.loss(batch)
    loss.backward()
    return float(loss.detach()), n, [p.grad.clone() for p in model.trainable_parameters()]


GENERATION_RECORDS = [
    {"taskname": "a", "q": "What colour is the sky?"},
    {"taskname": "b", "q": "A cat sat on the mat."},
    {"taskname": "a", "q": "Two plus two, and then some more words to make this prompt longer?"},
    {"taskname": "b", "q": "Paris."},
    {"taskname": "a", "q": "Why?"},
]


def generation_setup(lm, tokenizer, std: float = 1.0) -> tuple[PromptLearningModel, list[Example]]:
    hidden = lm.get_input_embeddings().weight.shape[1]
    gen = torch.Generator().manual_seed(11)
    bank = PromptBank(hidden)
    bank.add_tuned("a", torch.randn(3, hidden, generator=gen) * std)
    bank.add_frozen("b", torch.randn(5, hidden, generator=gen) * std)
    exs, _ = build_examples(GENERATION_RECORDS, [TEMPLATE_A, TEMPLATE_B], tokenizer, 128, inference=True)
    assert len(exs) == len(GENERATION_RECORDS)
    assert len({len(e) for e in exs}) == len(exs)  # every prompt has its own length
    return PromptLearningModel(lm, bank), exs

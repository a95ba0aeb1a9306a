"""The search's validation objective: closed label sets, the fixed sample, label-ranking accuracy against an
independent scoring of every label, and the exact-match fallback."""

from __future__ import annotations

import pytest
import torch

from promptray.platform.data.dataset import Record
from promptray.platform.data.encoding import TaskEncoding
from promptray.platform.errors import DatasetError
from promptray.platform.generation.inference import answer_logprobs, exact_match, predict, prepare
from promptray.platform.generation.loading import PromptModel
from promptray.platform.generation.logprobs import prompt_logprobs
from promptray.platform.generation.ranking import (
    ValidationObjective,
    closed_labels,
    label_ranking_accuracy,
    label_ranking_predictions,
    ranking_set,
    sample_records,
)
from promptray.platform.model.fingerprint import fingerprint_model
from promptray.platform.model.prefix import shared_prefixes
from promptray.platform.model.prompt_encoder import PromptBank
from promptray.platform.model.prompt_model import PromptLearningModel

from mixed_tasks import TEMPLATE_A, TEMPLATE_C

REVIEWS = ["A warm, funny film.", "Dull and far too long.", "Fine.", "I loved every minute of it!",
           "The plot made no sense at all.", "Great cast, weak ending."]


def records(labels: list[str], task: str = "c") -> list[Record]:
    return [Record({"taskname": task, "text": t, "label": lab}, f"v.jsonl:{i + 1}")
            for i, (t, lab) in enumerate(zip(REVIEWS, labels))]


def prompt_model(tiny_gpt2, add_eos: bool) -> PromptModel:
    lm, tok = tiny_gpt2
    bank = PromptBank(lm.get_input_embeddings().weight.shape[1])
    bank.add_frozen("c", torch.randn(6, bank.hidden, generator=torch.Generator().manual_seed(5)))
    bank.add_frozen("a", torch.randn(3, bank.hidden, generator=torch.Generator().manual_seed(6)))
    model = PromptLearningModel(lm, bank).eval()
    return PromptModel(model, tok, {"c": TEMPLATE_C, "a": TEMPLATE_A}, {"c": None, "a": None},
                       fingerprint_model(lm, "tiny"), {"c": TaskEncoding(add_eos=add_eos), "a": TaskEncoding()})


def test_a_closed_label_set_is_a_few_repeated_answers_and_free_form_answers_are_not():
    rows = records([" positive", " negative", " positive", " neutral", " negative", " positive"])
    assert closed_labels(TEMPLATE_C, rows, max_labels=20) == [" positive", " negative", " neutral"]
    assert closed_labels(TEMPLATE_C, rows, max_labels=2) is None  # more labels than allowed
    free = records([f" answer {i}" for i in range(6)])
    assert closed_labels(TEMPLATE_C, free, max_labels=20) is None  # every answer once: free-form
    assert closed_labels(TEMPLATE_A, rows, max_labels=20) is None  # no record of task a


def test_the_validation_sample_is_fixed_by_the_seed_and_keeps_file_order():
    rows = records([" positive"] * 6)
    first = sample_records(rows, 3, seed=7)
    assert first == sample_records(rows, 3, seed=7) and len(first) == 3
    assert [r.origin for r in first] == sorted((r.origin for r in first), key=lambda o: int(o.split(":")[1]))
    assert sample_records(rows, None, 0) == rows and sample_records(rows, 10, 0) == rows


@pytest.mark.parametrize("add_eos", [True, False])
def test_label_ranking_picks_the_label_an_independent_scoring_ranks_first(tiny_gpt2, add_eos):
    engine = prompt_model(tiny_gpt2, add_eos)
    labels = [" positive", " negative", " so-so"]
    rows = records([" positive", " negative", " positive", " negative", " so-so", " unheard-of"])
    rs = ranking_set(engine, "c", rows, labels, max_seq_length=128)
    assert rs.gold == [0, 1, 0, 1, 2, -1]  # an answer outside the labels is never right
    eos = engine.tokenizer.eos_token_id
    assert all((e.input_ids[-1] == eos and e.loss_mask[-1] == 1) == add_eos for e in rs.examples)
    expected = []
    for r, gold in enumerate(rs.gold):  # each label's answer log-probability, through another code path
        scores = []
        for j in range(len(labels)):
            e = rs.examples[r * len(labels) + j]
            got = prompt_logprobs(engine.model, e, engine.tokenizer.pad_token_id, k=0)
            scores.append(sum(lp.logprob for t, lp in got if e.loss_mask[t]))
        expected.append(max(range(len(labels)), key=scores.__getitem__) == gold)
    objective = ValidationObjective(engine, "c", rows, labels, max_seq_length=128)
    assert objective.kind == "label_ranking"
    engine.model.train()
    assert objective() == pytest.approx(sum(expected) / len(expected))
    assert engine.model.training  # scored in eval mode, then back to the mode it was in


def test_without_labels_the_objective_is_greedy_exact_match_and_an_empty_sample_is_an_error(tiny_gpt2):
    engine = prompt_model(tiny_gpt2, add_eos=True)
    rows = records([" positive", " negative", " fine", " bad", " good", " ok"])
    objective = ValidationObjective(engine, "c", rows, None, max_seq_length=128, max_new_tokens=3)
    assert objective.kind == "exact_match"
    examples = prepare(engine, rows, 3)
    preds = predict(engine, examples, objective_params(3))
    assert objective() == pytest.approx(sum(bool(exact_match(p, x.reference))
                                            for p, x in zip(preds, examples)) / 6)
    with pytest.raises(DatasetError, match="task 'a': no validation record"):
        ValidationObjective(engine, "a", rows, None, max_seq_length=128)
    with pytest.raises(DatasetError, match="no validation record to rank fits 8 tokens"):
        ranking_set(engine, "c", rows, [" positive", " negative"], max_seq_length=8)


def objective_params(tokens: int):
    from promptray.platform.generation.decode import GenerationParams

    return GenerationParams(max_new_tokens=tokens)


def test_label_ranking_keeps_each_records_labels_in_one_batch_and_its_grouping_changes_no_score(tiny_gpt2,
                                                                                              monkeypatch):
    """Six labels, some of several tokens, EOS: each forward holds whole records (all L rows of each), their
    rows share one prompt per record, and the scores and accuracy equal the per-task grouping's and the plain
    forward's."""
    engine = prompt_model(tiny_gpt2, add_eos=True)
    labels = [" positive", " negative", " so-so", " mixed feelings", " neutral", " unclear, at best"]
    rows = records([" positive", " negative", " so-so", " neutral", " mixed feelings", " negative"])
    rs = ranking_set(engine, "c", rows, labels, max_seq_length=128)
    seen, real = [], PromptLearningModel.target_logprobs

    def spy(self, batch, **kw):  # the rows of every forward, and the prefix groups they are split into
        seen.append((batch.input_ids.shape[0], [g.rows for g in shared_prefixes(batch)]))
        return real(self, batch, **kw)
    monkeypatch.setattr(PromptLearningModel, "target_logprobs", spy)
    accuracy = {}
    for how in ("prompt", "task", "plain"):
        engine.model.share_prefix, engine.model.prefix_group_by = how != "plain", how if how != "plain" else "prompt"
        accuracy[how] = label_ranking_accuracy(engine, rs, batch_size=4)
        scores = answer_logprobs(engine.model, rs.examples, engine.tokenizer.pad_token_id, 4 * len(labels))
        if how == "prompt":
            reference = scores
        assert scores == pytest.approx(reference, abs=1e-5)
    assert accuracy["prompt"] == accuracy["task"] == accuracy["plain"]
    L = len(labels)
    assert seen[0] == (4 * L, [tuple(range(r * L, r * L + L)) for r in range(4)])  # 4 records, all labels
    assert seen[1] == (2 * L, [tuple(range(r * L, r * L + L)) for r in range(2)])  # the last 2 records
    assert engine.model._verified == {"split+outer", "split"}  # prompt grouping (nested), task grouping


def test_label_ranking_runs_records_shortest_first_and_predicts_each_record_as_scored_alone(tiny_gpt2,
                                                                                          monkeypatch):
    """Records of very different lengths: the forwards take them shortest first (little padding in each), and
    each record's prediction, returned in the records' order, is the label an independent scoring of that
    record alone ranks first."""
    engine = prompt_model(tiny_gpt2, add_eos=True)
    labels = [" red", " green", " blue"]  # a random tiny model ranks these differently across the records
    texts = ["A long, long review " * 6, "Short.", "Medium length review here.", "Ok.", "Another long one " * 5,
             "Dull and far too long.", "I loved every minute of it!"]
    rows = [Record({"taskname": "c", "text": t, "label": labels[i % 3]}, f"v.jsonl:{i + 1}")
            for i, t in enumerate(texts)]
    rs = ranking_set(engine, "c", rows, labels, max_seq_length=128)
    alone = [max(range(3), key=lambda j: label_score(engine, rs.examples[r * 3 + j])) for r in range(len(rows))]
    lengths, real = [], PromptLearningModel.target_logprobs

    def spy(self, batch, **kw):  # each record's length (its first row, padding left out), forward by forward
        lengths.append(batch.attention_mask[::len(labels)].sum(1).tolist())
        return real(self, batch, **kw)
    monkeypatch.setattr(PromptLearningModel, "target_logprobs", spy)
    preds = label_ranking_predictions(engine, rs, batch_size=3)
    assert preds == alone and len(set(alone)) > 1  # records predicted differently: a mix-up would show
    flat = [n for forward in lengths for n in forward]
    assert flat == sorted(flat) and [len(f) for f in lengths] == [3, 3, 1]
    assert flat != [len(rs.examples[r * 3]) for r in range(len(rows))]  # not the file order
    assert label_ranking_accuracy(engine, rs, batch_size=3) == sum(a == g for a, g in zip(alone, rs.gold)) / 7


def label_score(engine: PromptModel, example) -> float:
    """The example's answer log-probability, one row through the per-token scoring code path."""
    got = prompt_logprobs(engine.model, example, engine.tokenizer.pad_token_id, k=0)
    return sum(lp.logprob for t, lp in got if example.loss_mask[t])


@pytest.mark.slow
def test_on_smollm2_one_prompt_per_record_ranks_the_demo_reviews_as_the_plain_forward(tmp_path):
    """The search's objective on smollm2-135m (fp32) with the demo's text-initialised sentiment prompt:
    the same scores and accuracy with each record's prompt run once as with every row in full."""
    from promptray.platform.config.schema import load_config
    from promptray.platform.data.dataset import read_records
    from promptray.platform.data.demo_data import movie_sentiment, write_splits
    from promptray.platform.demo import sentiment_config
    from promptray.platform.train.trainer import prepare_engine

    data = write_splits("sentiment", movie_sentiment()[:400], tmp_path / "data", n_val=12, n_test=8)
    raw = sentiment_config(tmp_path, data, steps=1, model="smollm2-135m")
    raw["trainer"]["precision"] = 32
    cfg = load_config(raw)
    e, d = prepare_engine(cfg), cfg.model.data
    engine = PromptModel(e.model, e.tokenizer, {"sentiment": e.templates["sentiment"]}, {"sentiment": None},
                         e.fingerprint, {"sentiment": TaskEncoding(add_bos=d.add_bos, add_eos=d.add_eos)})
    val = read_records([data["validation"]])
    labels = closed_labels(e.templates["sentiment"], read_records([data["train"]]) + val, max_labels=20)
    assert sorted(labels) == ["negative", "positive"]
    rs = ranking_set(engine, "sentiment", val, labels, max_seq_length=256)
    pad, model = engine.tokenizer.pad_token_id, engine.model.eval()
    shared = answer_logprobs(model, rs.examples, pad, 8 * len(labels))
    accuracy = label_ranking_accuracy(engine, rs, batch_size=8)
    assert model._verified == {"split+outer"}
    model.share_prefix = False
    assert answer_logprobs(model, rs.examples, pad, 8 * len(labels)) == pytest.approx(shared, abs=2e-4)
    assert label_ranking_accuracy(engine, rs, batch_size=8) == accuracy


def test_labels_that_no_answer_uses_are_an_error_not_a_zero_score(tiny_gpt2):
    engine = prompt_model(tiny_gpt2, add_eos=False)
    with pytest.raises(DatasetError) as e:
        ranking_set(engine, "c", records([" positive", " negative"]), ["foo", "bar"], max_seq_length=128)
    assert str(e.value) == ("task 'c': none of the 2 validation records' answers is among the labels ['foo', "
                            "'bar'] (answers seen: [' negative', ' positive']); give labels spelled as the answers are")

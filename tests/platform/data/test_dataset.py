"""Tests of prompt-learning datasets: reading records, checking them, and exact tokenization."""

from __future__ import annotations

import json
import logging

import pytest

from promptray.platform.data.dataset import Record, Tokenization, build_examples, encode_record, read_records
from promptray.platform.data.templates import TaskTemplate
from promptray.platform.errors import DatasetError

RTE = TaskTemplate(taskname="rte", total_virtual_tokens=9, virtual_token_splits=[3, 3, 3],
                   prompt_template="<|VIRTUAL_PROMPT_0|> Hypothesis: {sentence1}, <|VIRTUAL_PROMPT_1|> Premise: "
                                   "{sentence2} <|VIRTUAL_PROMPT_2|> Answer: {label}",
                   answer_only_loss=True, answer_field="label")
SENTIMENT = TaskTemplate(taskname="sentiment", prompt_template="<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}",
                         total_virtual_tokens=4, virtual_token_splits=[4], truncate_field="sentence",
                         answer_only_loss=True, answer_field="label")
DROPPY = TaskTemplate(taskname="droppy", prompt_template="<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}",
                      total_virtual_tokens=2, virtual_token_splits=[2], truncate_field=None)
RTE_RECORD = {"taskname": "rte", "sentence1": "And he said, Mama, I'm home.", "sentence2": "He didn't say a word.",
              "label": "no"}
LONG = " ".join(f"word{i}" for i in range(60))


@pytest.fixture(scope="module")
def tok(tiny_gpt2_path):
    """The tokenizer of the `tiny_gpt2` fixture (real GPT-2 BPE, pad = eos = bos = 50256), loaded once."""
    from promptray.platform.model.hub import load_base_model

    _, tokenizer = load_base_model(str(tiny_gpt2_path))
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id) == (50256, 50256, 50256)
    return tokenizer


def enc(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


# ----------------------------------------------------------------------------- exact encoding

def test_exact_ids_virtual_ids_and_answer_only_loss(tok):
    (ex,), stats = build_examples([RTE_RECORD], [RTE], tok, max_seq_length=128)
    pad, eos = tok.pad_token_id, tok.eos_token_id
    hyp = enc(tok, " Hypothesis: And he said, Mama, I'm home., ")
    prem = enc(tok, " Premise: He didn't say a word. ")
    ans_prompt, answer = enc(tok, " Answer:"), enc(tok, " no")
    assert ex.input_ids == [pad] * 3 + hyp + [pad] * 3 + prem + [pad] * 3 + ans_prompt + answer + [eos]
    assert ex.virtual_ids == ([0, 1, 2] + [-1] * len(hyp) + [3, 4, 5] + [-1] * len(prem) + [6, 7, 8]
                              + [-1] * (len(ans_prompt) + len(answer) + 1))
    assert ex.loss_mask == [0] * (len(ex) - len(answer) - 1) + [1] * (len(answer) + 1)
    assert sum(ex.loss_mask) == len(answer) + 1
    assert [i for i, v in enumerate(ex.virtual_ids) if v >= 0] == (
        [0, 1, 2] + [3 + len(hyp) + k for k in range(3)] + [6 + len(hyp) + len(prem) + k for k in range(3)])
    assert ex.taskname == "rte" and ex.reference == "no" and ex.origin == "records[0]"
    assert ex.record == RTE_RECORD
    assert stats.kept["rte"] == 1 and stats.dropped["rte"] == 0 and stats.truncated["rte"] == 0


def test_answer_only_loss_false_masks_all_real_tokens(tok):
    t = TaskTemplate(**{**RTE.model_dump(), "answer_only_loss": False})
    (ex,), _ = build_examples([RTE_RECORD], [t], tok, max_seq_length=128)
    (ref,), _ = build_examples([RTE_RECORD], [RTE], tok, max_seq_length=128)
    assert ex.input_ids == ref.input_ids and ex.virtual_ids == ref.virtual_ids
    assert ex.loss_mask == [int(v == -1) for v in ex.virtual_ids]
    assert sum(ex.loss_mask) == len(ex) - 9


def test_add_eos_and_add_bos(tok):
    rec = {"taskname": "sentiment", "sentence": "great film", "label": "positive"}
    body = enc(tok, " great film sentiment:") + enc(tok, " positive")
    (plain,), _ = build_examples([rec], [SENTIMENT], tok, 64, add_eos=False)
    assert plain.input_ids == [50256] * 4 + body
    assert plain.virtual_ids == [0, 1, 2, 3] + [-1] * len(body)
    assert plain.loss_mask == [0] * (4 + len(enc(tok, " great film sentiment:"))) + [1] * len(enc(tok, " positive"))
    (both,), _ = build_examples([rec], [SENTIMENT], tok, 64, add_eos=True, add_bos=True)
    assert both.input_ids == [tok.bos_token_id] + [50256] * 4 + body + [tok.eos_token_id]
    assert both.virtual_ids == [-1, 0, 1, 2, 3] + [-1] * (len(body) + 1)
    assert both.loss_mask == [0] + plain.loss_mask + [1]


def test_multi_task_rows_start_at_zero_per_task(tok):
    records = [RTE_RECORD, {"taskname": "sentiment", "sentence": "meh", "label": "neutral"}]
    rte_ex, sent_ex = build_examples(records, [RTE, SENTIMENT], tok, 128)[0]
    assert [v for v in rte_ex.virtual_ids if v >= 0] == list(range(9))
    assert [v for v in sent_ex.virtual_ids if v >= 0] == [0, 1, 2, 3]
    assert sent_ex.virtual_ids[:4] == [0, 1, 2, 3]


def test_numbers_are_rendered_as_text(tok):
    rec = {"taskname": "sentiment", "sentence": 3.5, "label": 1}
    (ex,), _ = build_examples([rec], [SENTIMENT], tok, 64)
    assert ex.input_ids == [50256] * 4 + enc(tok, " 3.5 sentiment:") + enc(tok, " 1") + [50256]
    assert ex.reference == "1"


# ----------------------------------------------------------------------------- truncation and dropping

def test_truncate_field_cut_from_its_end(tok):
    rec = {"taskname": "sentiment", "sentence": LONG, "label": "positive"}
    full = 4 + len(enc(tok, f" {LONG} sentiment:")) + len(enc(tok, " positive")) + 1
    max_len = 40
    assert full > max_len
    (ex,), stats = build_examples([rec], [SENTIMENT], tok, max_len)
    assert len(ex) <= max_len and len(ex) >= max_len - 2
    assert stats.truncated["sentiment"] == 1 and stats.kept["sentiment"] == 1 and stats.dropped["sentiment"] == 0
    answer = enc(tok, " positive") + [50256]
    assert ex.input_ids[-len(answer):] == answer
    assert ex.loss_mask == [0] * (len(ex) - len(answer)) + [1] * len(answer)
    assert ex.virtual_ids[:4] == [0, 1, 2, 3]
    prompt = tok.decode(ex.input_ids[4:len(ex) - len(answer)])
    assert prompt.startswith(" ") and prompt.endswith(" sentiment:")
    kept = prompt[1:-len(" sentiment:")]
    assert kept and len(kept) < len(LONG) and LONG.startswith(kept)
    assert ex.record["sentence"] == LONG and ex.reference == "positive"  # the original record is kept


def test_truncation_is_exact_when_possible(tok):
    rec = {"taskname": "sentiment", "sentence": LONG, "label": "positive"}
    for max_len in (20, 33, 57):
        (ex,), _ = build_examples([rec], [SENTIMENT], tok, max_len)
        assert len(ex) == max_len  # "wordN" splits into whole tokens: the cut lands exactly


def test_truncation_never_leaves_half_a_character(tok):
    """GPT-2 BPE splits CJK / emoji into byte tokens; a cut between them must not leave U+FFFD behind."""
    text = "日本語のテキストです。" * 5 + " 🙂🙂 café"
    answer = enc(tok, " ok") + [50256]
    for max_len in range(12, 60):
        (ex,), _ = build_examples([{"taskname": "sentiment", "sentence": text, "label": "ok"}], [SENTIMENT], tok,
                                  max_len)
        assert len(ex) <= max_len and ex.input_ids[-len(answer):] == answer
        kept = tok.decode(ex.input_ids[4:len(ex) - len(answer)])[1:-len(" sentiment:")]
        assert "\ufffd" not in kept and text.startswith(kept), (max_len, kept)


def test_example_that_fits_is_not_truncated(tok):
    rec = {"taskname": "sentiment", "sentence": "short", "label": "positive"}
    n = 4 + len(enc(tok, " short sentiment:")) + len(enc(tok, " positive")) + 1
    (ex,), stats = build_examples([rec], [SENTIMENT], tok, n)
    assert len(ex) == n and stats.truncated["sentiment"] == 0


def test_truncate_null_drops_over_long_example_and_warns(tok, caplog):
    records = [{"taskname": "droppy", "sentence": LONG, "label": "positive"},
               {"taskname": "droppy", "sentence": "ok", "label": "positive"},
               {"taskname": "sentiment", "sentence": "fine", "label": "negative"}]
    with caplog.at_level(logging.WARNING, logger="promptray.platform.data.dataset"):
        examples, stats = build_examples(records, [DROPPY, SENTIMENT], tok, 30)
    assert [(e.taskname, e.origin) for e in examples] == [("droppy", "records[1]"), ("sentiment", "records[2]")]
    assert stats.dropped == {"droppy": 1}
    assert stats.kept == {"droppy": 1, "sentiment": 1}
    assert "droppy: 1 kept, 0 truncated, 1 dropped" in stats.summary()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "max_seq_length=30" in warnings[0].getMessage() and "'droppy': 1" in warnings[0].getMessage()


def test_no_warning_when_nothing_dropped(tok, caplog):
    with caplog.at_level(logging.WARNING, logger="promptray.platform.data.dataset"):
        build_examples([{"taskname": "droppy", "sentence": "ok", "label": "x"}], [DROPPY], tok, 30)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_untruncatable_example_dropped(tok):
    """Even an empty truncate_field would not fit: the example is dropped."""
    long_label = {"taskname": "sentiment", "sentence": "a b c", "label": LONG}
    examples, stats = build_examples([long_label], [SENTIMENT], tok, 30)
    assert examples == [] and stats.dropped == {"sentiment": 1} and stats.kept["sentiment"] == 0
    # issue 13, F6: the reason names the part that cannot be cut, and suggests no truncate_field it already has
    need = 4 + len(enc(tok, "  sentiment:")) + len(enc(tok, " " + LONG)) + 1  # virtual, text, answer, EOS
    assert stats.uncut == {"sentiment": need} and need > 30
    assert stats.dropped_reasons({"sentiment": SENTIMENT}, "max_seq_length=30") == (
        f"task 'sentiment': 1 example(s) need up to {need} tokens even with truncate_field 'sentence' cut to "
        "nothing (4 virtual tokens, the template's text and the other fields), more than max_seq_length=30")


def test_shortest_example_counts_virtual_tokens_template_text_and_bos_eos(tok):
    from promptray.platform.data.dataset import shortest_example

    text = len(enc(tok, "  sentiment:")) + len(enc(tok, " "))  # the answer keeps the space before {label}
    assert shortest_example(SENTIMENT, tok, add_bos=False, add_eos=True, inference=False) == 4 + text + 1
    assert shortest_example(SENTIMENT, tok, add_bos=True, add_eos=True, inference=False) == 4 + text + 2
    assert shortest_example(SENTIMENT, tok, add_bos=False, add_eos=True, inference=True) == \
        4 + len(enc(tok, "  sentiment:"))  # an inference prompt ends where the answer starts; no EOS


def test_encode_record_returns_truncated_flag(tok):
    rec = Record({"taskname": "sentiment", "sentence": LONG, "label": "pos"}, "x:1")
    ex, truncated = encode_record(SENTIMENT, rec, Tokenization.of(tok), 25)
    assert truncated is True and len(ex) == 25 and ex.origin == "x:1"
    ex, truncated = encode_record(DROPPY, Record({**rec.data, "taskname": "droppy"}, "x:2"), Tokenization.of(tok), 25)
    assert ex is None and truncated is False


# ----------------------------------------------------------------------------- reading files

def test_several_jsonl_files_and_json_array(tok, tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [RTE_RECORD, {"taskname": "sentiment", "sentence": "s1", "label": "p"}])
    (tmp_path / "b.jsonl").write_text(
        "\n" + json.dumps({"taskname": "sentiment", "sentence": "s2", "label": "n"}) + "\n\n"
        + json.dumps({"taskname": "rte", "sentence1": "x", "sentence2": "y", "label": "yes"}) + "\n")
    (tmp_path / "c.json").write_text(json.dumps(
        [{"taskname": "sentiment", "sentence": "s3", "label": "q"}, RTE_RECORD], indent=2))
    sources = [a, tmp_path / "b.jsonl", str(tmp_path / "c.json")]
    examples, stats = build_examples(sources, [RTE, SENTIMENT], tok, 128)
    assert [(e.taskname, e.origin, e.reference) for e in examples] == [
        ("rte", f"{a}:1", "no"), ("sentiment", f"{a}:2", "p"),
        ("sentiment", f"{tmp_path / 'b.jsonl'}:2", "n"), ("rte", f"{tmp_path / 'b.jsonl'}:4", "yes"),
        ("sentiment", f"{tmp_path / 'c.json'}[0]", "q"), ("rte", f"{tmp_path / 'c.json'}[1]", "no")]
    assert stats.kept == {"rte": 3, "sentiment": 3}
    (single,), _ = build_examples([RTE_RECORD], [RTE], tok, 128)
    assert examples[0].input_ids == single.input_ids == examples[5].input_ids


def test_read_records_single_source_and_dicts(tmp_path):
    path = write_jsonl(tmp_path / "one.jsonl", [{"taskname": "t", "x": 1}])
    assert read_records(path) == [Record({"taskname": "t", "x": 1}, f"{path}:1")]
    assert read_records({"taskname": "t"}) == [Record({"taskname": "t"}, "records[0]")]


def test_jsonl_line_with_unicode_line_separator(tmp_path):
    """U+2028 / U+0085 are legal unescaped inside JSON strings; they must not split a .jsonl line."""
    path = tmp_path / "u.jsonl"
    rows = [{"taskname": "t", "x": "a\u2028b\x85c"}, {"taskname": "t", "x": "d"}]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert read_records([path]) == [Record(rows[0], f"{path}:1"), Record(rows[1], f"{path}:2")]


def test_crlf_jsonl(tmp_path):
    path = tmp_path / "w.jsonl"
    path.write_bytes(b'{"taskname": "t", "x": "a"}\r\n\r\n{"taskname": "t", "x": "b"}\r\n')
    assert read_records([path]) == [Record({"taskname": "t", "x": "a"}, f"{path}:1"),
                                    Record({"taskname": "t", "x": "b"}, f"{path}:3")]


def test_bad_json_line_names_file_and_line(tok, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(RTE_RECORD) + "\n" + json.dumps(RTE_RECORD) + '\n{"taskname": "rte", oops}\n')
    with pytest.raises(DatasetError, match=rf"{path}:3: invalid JSON"):
        build_examples([path], [RTE], tok, 128)


def test_bad_json_array_names_file(tok, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"taskname": "rte"},\n  {oops}\n]\n')
    with pytest.raises(DatasetError, match=rf"{path}:3: invalid JSON"):
        build_examples([path], [RTE], tok, 128)


def test_nonexistent_file(tok, tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(DatasetError, match=rf"data file '{missing}' does not exist"):
        build_examples([missing], [RTE], tok, 128)


def test_malformed_records_all_reported_with_file_and_line(tok, tmp_path):
    path = tmp_path / "data.jsonl"
    write_jsonl(path, [
        RTE_RECORD,                                                                # 1 ok
        {"sentence": "no task"},                                                   # 2 missing taskname
        {"taskname": "squad", "context": "c"},                                     # 3 unknown task
        {"taskname": "rte", "sentence1": "a", "label": "b"},                       # 4 missing sentence2
        {"taskname": "rte", "sentence1": ["a"], "sentence2": None, "label": "b"},  # 5 list + null
        ["not", "an", "object"],                                                   # 6
    ])
    with pytest.raises(DatasetError) as info:
        build_examples([path], [RTE, SENTIMENT], tok, 128)
    msg = str(info.value)
    assert msg.startswith("6 malformed record(s):")
    assert f"{path}:1" not in msg
    assert f"{path}:2: missing 'taskname'" in msg
    assert f"{path}:3: unknown taskname 'squad'; known tasks: ['rte', 'sentiment']" in msg
    assert f"{path}:4: task 'rte' record is missing field 'sentence2'" in msg
    assert f"{path}:5: field 'sentence1' must be a string or number, got list" in msg
    assert f"{path}:5: field 'sentence2' must be a string or number, got NoneType" in msg
    assert f"{path}:6: expected a JSON object, got list" in msg


def test_malformed_in_memory_record_names_index(tok):
    with pytest.raises(DatasetError, match=r"records\[1\]: task 'rte' record is missing field 'label'"):
        build_examples([RTE_RECORD, {k: v for k, v in RTE_RECORD.items() if k != "label"}], [RTE], tok, 128)


# ----------------------------------------------------------------------------- inference

def test_inference_accepts_missing_answer_and_keeps_reference(tok, tmp_path):
    path = write_jsonl(tmp_path / "inf.jsonl", [
        {"taskname": "sentiment", "sentence": "great film"},
        {"taskname": "sentiment", "sentence": "great film", "label": "positive"},
    ])
    (no_ref, with_ref), stats = build_examples([path], [SENTIMENT], tok, 64, inference=True)
    prompt = [50256] * 4 + enc(tok, " great film sentiment:")
    assert no_ref.input_ids == with_ref.input_ids == prompt  # no answer, no EOS at inference
    assert no_ref.virtual_ids == [0, 1, 2, 3] + [-1] * (len(prompt) - 4)
    assert no_ref.reference is None and with_ref.reference == "positive"
    assert stats.kept == {"sentiment": 2}
    with pytest.raises(DatasetError, match="missing field 'label'"):
        build_examples([path], [SENTIMENT], tok, 64, inference=False)


def test_inference_missing_field_renders_empty_and_is_scored_after_answer_issue13(tok):
    """Issue 13 #6: a record without `question` is prompted up to "Answer:" (NeMo's rule), not cut at "Question:"."""
    squad = TaskTemplate(taskname="squad", total_virtual_tokens=5, virtual_token_splits=[5],
                         prompt_template="<|VIRTUAL_PROMPT_0|> Context: {context} Question: {question} "
                                         "Answer: {answer}")
    (ex,), _ = build_examples([{"taskname": "squad", "context": "c", "answer": "a"}], [squad], tok, 64, inference=True)
    assert ex.input_ids == [50256] * 5 + enc(tok, " Context: c Question:  Answer:")
    assert ex.reference == "a"


def test_inference_still_checks_types(tok):
    with pytest.raises(DatasetError, match="field 'label' must be a string or number, got list"):
        build_examples([{"taskname": "sentiment", "sentence": "s", "label": ["x"]}], [SENTIMENT], tok, 64,
                       inference=True)


def test_files_with_byte_order_mark(tmp_path):
    rows = [{"taskname": "t", "x": "a"}, {"taskname": "t", "x": "b"}]
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(rows).encode())
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + "\n".join(json.dumps(r) for r in rows).encode())
    assert [r.data for r in read_records([tmp_path / "bom.json", tmp_path / "bom.jsonl"])] == rows + rows


ODD_TEXTS = ["", " ", "  two spaces", "tab\there", "line\nbreak", "naïve café — ünïcode ✓", "emoji 🙂🙂",
             "\u2028sep", "word0 word1", "x" * 300, " leading", "trailing "]


def test_primed_ids_are_the_tokenizers_own(tok):
    primed = Tokenization.of(tok)
    primed.prime(ODD_TEXTS + ODD_TEXTS[:3])  # repeats are encoded once
    assert set(primed.known) == {t for t in ODD_TEXTS if t}
    for t in ODD_TEXTS:
        assert primed.encode(t) == enc(tok, t) == Tokenization.of(tok).encode(t)
    ids = primed.encode("naïve café — ünïcode ✓")
    ids.append(-1)  # a caller's copy: the memo is untouched
    assert primed.encode("naïve café — ünïcode ✓") == enc(tok, "naïve café — ünïcode ✓")


def test_examples_are_the_same_with_the_batch_encoding_as_record_by_record(tok, monkeypatch):
    records = [{"taskname": "sentiment", "sentence": t, "label": lab}
               for t in ODD_TEXTS[1:] + [LONG] for lab in ("good", " bad")]
    primed, _ = build_examples(records, [SENTIMENT], tok, 40)
    monkeypatch.setattr(Tokenization, "prime", lambda self, texts: None)
    alone, _ = build_examples(records, [SENTIMENT], tok, 40)
    assert [(e.input_ids, e.virtual_ids, e.loss_mask) for e in primed] == \
        [(e.input_ids, e.virtual_ids, e.loss_mask) for e in alone]
    assert len(primed) == len(records) and any(len(e.input_ids) == 40 for e in primed)  # LONG was truncated


def test_a_shared_tokenization_gives_the_same_examples_and_tokenizes_a_text_once(tok, monkeypatch):
    """A search pack encodes its records once per candidate with one Tokenization: the second encoding
    tokenizes nothing new and its examples equal those built alone."""
    records = [{"taskname": "sentiment", "sentence": t, "label": lab}
               for t in ODD_TEXTS[1:] + [LONG] for lab in ("good", " bad")]
    alone, _ = build_examples(records, [SENTIMENT], tok, 40)
    shared = Tokenization.of(tok)
    first, _ = build_examples(records, [SENTIMENT], tok, 40, tokenization=shared)
    known = dict(shared.known)
    calls = []
    monkeypatch.setattr(type(tok), "__call__", lambda self, texts, **kw: calls.append(texts))
    again, _ = build_examples(records, [SENTIMENT], tok, 40, tokenization=shared)
    assert calls == [] and shared.known == known  # every text was known
    as_rows = lambda exs: [(e.input_ids, e.virtual_ids, e.loss_mask) for e in exs]  # noqa: E731
    assert as_rows(first) == as_rows(again) == as_rows(alone)


def test_a_tokenization_of_another_tokenizer_is_refused(tok):
    other = Tokenization(object(), tok.pad_token_id, tok.eos_token_id, None)
    with pytest.raises(ValueError, match="another tokenizer"):
        build_examples([{"taskname": "sentiment", "sentence": "a", "label": "good"}], [SENTIMENT], tok, 40,
                       tokenization=other)

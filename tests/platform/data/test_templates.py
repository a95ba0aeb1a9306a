"""Tests of task templates: parsing, validation (every problem at once) and rendering (training / inference)."""

from __future__ import annotations

import pytest

from promptray.platform.data.templates import (
    Chunk,
    Field,
    TaskTemplate,
    Text,
    Virtual,
    parse_template,
    template_problems,
    validate_task_templates,
)
from promptray.platform.errors import ConfigError

RTE_TEMPLATE = ("<|VIRTUAL_PROMPT_0|> Hypothesis: {sentence1}, <|VIRTUAL_PROMPT_1|> Premise: {sentence2} "
                "<|VIRTUAL_PROMPT_2|> Answer: {label}")
RTE_RECORD = {"sentence1": "And he said, Mama, I'm home.", "sentence2": "He didn't say a word."}
SQUAD_TEMPLATE = "<|VIRTUAL_PROMPT_0|> Context: {context} Question: {question} Answer: {answer}"


def tmpl(**kw) -> dict:
    base = {"taskname": "task", "prompt_template": "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}",
            "total_virtual_tokens": 4, "virtual_token_splits": [4]}
    base.update(kw)
    return base


def rte(**kw) -> TaskTemplate:
    return TaskTemplate(**{"taskname": "rte", "prompt_template": RTE_TEMPLATE, "total_virtual_tokens": 9,
                           "virtual_token_splits": [3, 3, 3], **kw})


def squad(**kw) -> TaskTemplate:
    return TaskTemplate(**{"taskname": "squad", "prompt_template": SQUAD_TEMPLATE, "total_virtual_tokens": 5,
                           "virtual_token_splits": [5], "answer_field": "answer", "answer_only_loss": True,
                           "truncate_field": "context", **kw})


def problems_of(raw: list) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate_task_templates(raw)
    return info.value.problems


# ----------------------------------------------------------------------------- parsing

def test_parse_template_into_parts():
    parts, problems = parse_template(RTE_TEMPLATE)
    assert problems == []
    assert parts == [Virtual(0), Text(" Hypothesis: "), Field("sentence1"), Text(", "),
                     Virtual(1), Text(" Premise: "), Field("sentence2"), Text(" "),
                     Virtual(2), Text(" Answer: "), Field("label")]


def test_parse_adjacent_fields_and_newlines():
    parts, problems = parse_template("<|VIRTUAL_PROMPT_0|> Predict intent and slot <|VIRTUAL_PROMPT_1|> :\n"
                                     "{utterance}{label}")
    assert problems == []
    assert parts == [Virtual(0), Text(" Predict intent and slot "), Virtual(1), Text(" :\n"),
                     Field("utterance"), Field("label")]


def test_template_properties():
    t = rte()
    assert t.fields == ["sentence1", "sentence2", "label"]
    assert t.target_field == "label"  # no answer_field: the field that ends the template
    assert squad().target_field == "answer"
    no_target = TaskTemplate(taskname="t", prompt_template="<|VIRTUAL_PROMPT_0|> {sentence} Answer:",
                             total_virtual_tokens=1, virtual_token_splits=[1])
    assert no_target.target_field is None
    assert [p for p in t.parts if isinstance(p, Virtual)] == [Virtual(0, 0, 3), Virtual(1, 3, 3), Virtual(2, 6, 3)]
    uneven = TaskTemplate(taskname="t", prompt_template="<|VIRTUAL_PROMPT_0|> a <|VIRTUAL_PROMPT_1|> {x}",
                          total_virtual_tokens=10, virtual_token_splits=[7, 3])
    assert [p for p in uneven.parts if isinstance(p, Virtual)] == [Virtual(0, 0, 7), Virtual(1, 7, 3)]


# ----------------------------------------------------------------------------- rendering (spec's example)

def test_spec_example_render_virtual_chunks_and_literal_text():
    """The spec's RTE example: VVV Hypothesis: ... VVV Premise: ... VVV Answer:, VVV = three virtual tokens.

    (The spec's prose shows "home. VVV"; its own template has "{sentence1}," so the comma is kept here.)
    """
    chunks = rte().render({**RTE_RECORD, "label": "yes"})
    assert chunks == [
        Chunk("virtual", offset=0, count=3),
        Chunk("prompt", text=" Hypothesis: And he said, Mama, I'm home., "),
        Chunk("virtual", offset=3, count=3),
        Chunk("prompt", text=" Premise: He didn't say a word. "),
        Chunk("virtual", offset=6, count=3),
        Chunk("prompt", text=" Answer:"),
        Chunk("answer", text=" yes"),
    ]
    flat = "".join("VVV" if c.kind == "virtual" else c.text for c in chunks)
    assert flat == "VVV Hypothesis: And he said, Mama, I'm home., VVV Premise: He didn't say a word. VVV Answer: yes"


def test_spec_example_template_without_label_field():
    """The spec's template exactly as written (ends with 'Answer:' and no answer field)."""
    t = TaskTemplate(taskname="rte", total_virtual_tokens=9, virtual_token_splits=[3, 3, 3],
                     prompt_template="<|VIRTUAL_PROMPT_0|> Hypothesis: {sentence1}, <|VIRTUAL_PROMPT_1|> "
                                     "Premise: {sentence2} <|VIRTUAL_PROMPT_2|> Answer:")
    for inference in (False, True):
        chunks = t.render(RTE_RECORD, inference=inference)
        assert [(c.kind, c.offset, c.count) for c in chunks if c.kind == "virtual"] == [
            ("virtual", 0, 3), ("virtual", 3, 3), ("virtual", 6, 3)]
        assert [c.text for c in chunks if c.kind != "virtual"] == [
            " Hypothesis: And he said, Mama, I'm home., ", " Premise: He didn't say a word. ", " Answer:"]
        assert all(c.kind != "answer" for c in chunks)


def test_training_split_prompt_has_no_trailing_space_answer_starts_with_it():
    t = TaskTemplate(**tmpl())
    chunks = t.render({"sentence": "the movie was great", "label": "positive"})
    assert chunks == [Chunk("virtual", offset=0, count=4),
                      Chunk("prompt", text=" the movie was great sentiment:"),
                      Chunk("answer", text=" positive")]
    assert not chunks[1].text[-1].isspace()


def test_training_split_without_whitespace_before_answer():
    t = TaskTemplate(taskname="intent_and_slot",
                     prompt_template="<|VIRTUAL_PROMPT_0|> Predict intent and slot <|VIRTUAL_PROMPT_1|> :\n"
                                     "{utterance}{label}",
                     total_virtual_tokens=10, virtual_token_splits=[7, 3], answer_only_loss=True,
                     answer_field="label")
    chunks = t.render({"utterance": "wake me up", "label": "alarm_set"})
    assert chunks == [Chunk("virtual", offset=0, count=7), Chunk("prompt", text=" Predict intent and slot "),
                      Chunk("virtual", offset=7, count=3), Chunk("prompt", text=" :\nwake me up"),
                      Chunk("answer", text="alarm_set")]


def test_training_answer_side_keeps_text_after_answer_field():
    t = TaskTemplate(taskname="t", prompt_template="<|VIRTUAL_PROMPT_0|> Q: {q} A: {a} (end)",
                     total_virtual_tokens=2, virtual_token_splits=[2], answer_field="a")
    assert t.render({"q": "why", "a": 42}) == [Chunk("virtual", offset=0, count=2), Chunk("prompt", text=" Q: why A:"),
                                               Chunk("answer", text=" 42 (end)")]


# ----------------------------------------------------------------------------- rendering at inference

def test_inference_missing_answer_cuts_prompt_spec_squad_example():
    chunks = squad().render({"context": "some paragraph", "question": "question related to paragraph"},
                            inference=True)
    assert chunks == [Chunk("virtual", offset=0, count=5),
                      Chunk("prompt", text=" Context: some paragraph Question: question related to paragraph "
                                           "Answer:")]
    assert chunks[-1].text.endswith(" Answer:")


def test_inference_never_feeds_the_target_even_if_present():
    record = {"context": "c", "question": "q", "answer": "THE ANSWER"}
    chunks = squad().render(record, inference=True)
    assert chunks == [Chunk("virtual", offset=0, count=5), Chunk("prompt", text=" Context: c Question: q Answer:")]
    assert all("THE ANSWER" not in c.text for c in chunks)
    # The template's last field is the target when answer_field is not set.
    assert rte().render({**RTE_RECORD, "label": "yes"}, inference=True)[-1] == Chunk("prompt", text=" Answer:")
    # Training does feed it.
    assert squad().render(record)[-1] == Chunk("answer", text=" THE ANSWER")


def test_inference_missing_field_is_empty_and_prompt_ends_where_the_answer_starts_issue13():
    """Issue 13 #6: NeMo renders a missing field as "" and goes on, so the prompt still ends at "Answer:"
    (before, a missing field that ran to the target cut the prompt at "... Question:")."""
    chunks = squad().render({"context": "c"}, inference=True)
    assert chunks == [Chunk("virtual", offset=0, count=5), Chunk("prompt", text=" Context: c Question:  Answer:")]
    chunks = squad().render({"context": "c", "answer": "a"}, inference=True)  # the reference is still not fed
    assert chunks == [Chunk("virtual", offset=0, count=5), Chunk("prompt", text=" Context: c Question:  Answer:")]
    assert squad().render({}, inference=True) == [Chunk("virtual", offset=0, count=5),
                                                  Chunk("prompt", text=" Context:  Question:  Answer:")]


def test_inference_missing_middle_field_is_empty():
    chunks = squad().render({"question": "q"}, inference=True)
    assert chunks == [Chunk("virtual", offset=0, count=5), Chunk("prompt", text=" Context:  Question: q Answer:")]


def test_inference_missing_field_before_a_virtual_marker():
    chunks = rte().render({"sentence2": "s2"}, inference=True)
    assert chunks == [Chunk("virtual", offset=0, count=3), Chunk("prompt", text=" Hypothesis: , "),
                      Chunk("virtual", offset=3, count=3), Chunk("prompt", text=" Premise: s2 "),
                      Chunk("virtual", offset=6, count=3), Chunk("prompt", text=" Answer:")]


def test_inference_training_prompt_tokens_agree():
    """The inference prompt is exactly the training prompt side (so they tokenize the same)."""
    record = {"context": "c", "question": "q", "answer": "a"}
    train = [c for c in squad().render(record) if c.kind != "answer"]
    assert train == squad().render(record, inference=True)


# ----------------------------------------------------------------------------- validation

def test_valid_templates_pass():
    ok = validate_task_templates([tmpl(taskname="a"), tmpl(taskname="b", answer_field="label",
                                                          answer_only_loss=True, truncate_field="sentence")])
    assert [t.taskname for t in ok] == ["a", "b"]
    assert template_problems(rte()) == []


def test_each_problem_is_reported_naming_task_and_field():
    cases = {
        "splits_sum": (tmpl(total_virtual_tokens=5, virtual_token_splits=[2, 2],
                            prompt_template="<|VIRTUAL_PROMPT_0|> {x} <|VIRTUAL_PROMPT_1|> {y}"),
                       ["virtual_token_splits", "sum to 4", "total_virtual_tokens is 5"]),
        "split_count": (tmpl(total_virtual_tokens=4, virtual_token_splits=[2, 2]),
                        ["virtual_token_splits", "2 entries", "1 virtual marker"]),
        "marker_order": (tmpl(prompt_template="<|VIRTUAL_PROMPT_1|> {x} <|VIRTUAL_PROMPT_0|> {y}",
                              virtual_token_splits=[2, 2]),
                         ["numbered 0..k-1", "<|VIRTUAL_PROMPT_1|>"]),
        "marker_gap": (tmpl(prompt_template="<|VIRTUAL_PROMPT_0|> {x} <|VIRTUAL_PROMPT_2|> {y}",
                            virtual_token_splits=[2, 2]),
                       ["numbered 0..k-1", "<|VIRTUAL_PROMPT_2|>"]),
        "field_digit": (tmpl(prompt_template="<|VIRTUAL_PROMPT_0|> {1x} {label}"), ["malformed field '{1x}'"]),
        "field_open": (tmpl(prompt_template="<|VIRTUAL_PROMPT_0|> {label} {a"), ["malformed field '{a'"]),
        "field_close": (tmpl(prompt_template="<|VIRTUAL_PROMPT_0|> } {label}"), ["'}' without a matching '{'"]),
        "answer_missing": (tmpl(answer_field="answer"), ["answer_field 'answer' is not a field"]),
        "answer_not_end": (tmpl(prompt_template="<|VIRTUAL_PROMPT_0|> {label} is {sentence}",
                                answer_field="label", answer_only_loss=True),
                           ["answer_field {label} must be at the end"]),
        "answer_truncated": (tmpl(answer_field="label", truncate_field="label"),
                             ["answer_field and truncate_field are both 'label'"]),
        "truncate_unknown": (tmpl(truncate_field="context"), ["truncate_field 'context' is not a field"]),
    }
    for name, (raw, needles) in cases.items():
        raw = {**raw, "taskname": name}
        problems = problems_of([raw])
        assert len(problems) == 1, (name, problems)
        assert problems[0].startswith(f"model.task_templates[0] (task {name!r})"), problems
        for needle in needles:
            assert needle in problems[0], (name, needle, problems[0])


def test_answer_field_may_sit_mid_template_without_answer_only_loss():
    assert template_problems(TaskTemplate(**tmpl(prompt_template="<|VIRTUAL_PROMPT_0|> {label} is {sentence}",
                                                 answer_field="label"))) == []
    # trailing whitespace after the answer field is fine with answer_only_loss
    assert template_problems(TaskTemplate(**tmpl(prompt_template="<|VIRTUAL_PROMPT_0|> {sentence} {label} \n",
                                                 answer_field="label", answer_only_loss=True))) == []


def test_every_problem_reported_at_once():
    raw = [
        tmpl(taskname="sums", total_virtual_tokens=5, virtual_token_splits=[2, 2],
             prompt_template="<|VIRTUAL_PROMPT_0|> {x} <|VIRTUAL_PROMPT_1|> {y}"),
        tmpl(taskname="count", virtual_token_splits=[2, 2]),
        tmpl(taskname="order", prompt_template="<|VIRTUAL_PROMPT_1|> {x} <|VIRTUAL_PROMPT_0|> {y}",
             virtual_token_splits=[2, 2]),
        tmpl(taskname="fields", prompt_template="<|VIRTUAL_PROMPT_0|> } {1x} {label} {a"),
        tmpl(taskname="ans", answer_field="answer", truncate_field="nope"),
        tmpl(taskname="end", prompt_template="<|VIRTUAL_PROMPT_0|> {label} {sentence}", answer_field="label",
             answer_only_loss=True, truncate_field="label"),
        tmpl(taskname="sums"),
        tmpl(taskname="types", total_virtual_tokens="x"),
    ]
    problems = problems_of(raw)
    by_task: dict[str, list[str]] = {}
    for p in problems:
        by_task.setdefault(p.split("(task '")[1].split("'")[0], []).append(p)
    assert sorted(by_task) == ["ans", "count", "end", "fields", "order", "sums", "types"]
    assert len(by_task["sums"]) == 2  # splits sum (template #0) + duplicate taskname (template #6)
    assert any("sum to 4" in p for p in by_task["sums"])
    assert any(p.startswith("model.task_templates[6] (task 'sums')") and "already used by model.task_templates[0]"
               in p and "unique" in p for p in by_task["sums"])
    assert len(by_task["count"]) == 1 and "2 entries" in by_task["count"][0]
    assert len(by_task["order"]) == 1 and "numbered 0..k-1" in by_task["order"][0]
    assert len(by_task["fields"]) == 3
    assert any("'}' without" in p for p in by_task["fields"])
    assert any("'{1x}'" in p for p in by_task["fields"])
    assert any("'{a'" in p for p in by_task["fields"])
    assert len(by_task["ans"]) == 2
    assert any("answer_field 'answer' is not a field" in p for p in by_task["ans"])
    assert any("truncate_field 'nope' is not a field" in p for p in by_task["ans"])
    assert len(by_task["end"]) == 2
    assert any("must be at the end" in p for p in by_task["end"])
    assert any("answer_field and truncate_field are both 'label'" in p for p in by_task["end"])
    assert by_task["types"] == ["model.task_templates[7] (task 'types').total_virtual_tokens: Input should be a "
                                "valid integer, unable to parse string as an integer (got 'x')"]
    assert len(problems) == 1 + 1 + 1 + 1 + 3 + 2 + 2 + 1


def test_pydantic_type_errors_name_field_and_value():
    problems = problems_of([{"taskname": "t", "prompt_template": 3, "total_virtual_tokens": 1,
                             "virtual_token_splits": "abc", "answer_only_loss": "maybe", "bogus": 1}])
    assert len(problems) == 4
    assert all(p.startswith("model.task_templates[0] (task 't').") for p in problems)
    fields = sorted(p.split("(task 't').")[1].split(":")[0] for p in problems)
    assert fields == ["answer_only_loss", "bogus", "prompt_template", "virtual_token_splits"]
    assert any("got 'maybe'" in p for p in problems)


def test_missing_required_keys_and_non_dict_entries():
    problems = problems_of([{"taskname": "t"}, "not a dict"])
    assert sorted(p.split(":")[0] for p in problems[:3]) == [
        "model.task_templates[0] (task 't').prompt_template",
        "model.task_templates[0] (task 't').total_virtual_tokens",
        "model.task_templates[0] (task 't').virtual_token_splits"]
    assert problems[3].startswith("model.task_templates[1] (task '#1')")
    assert len(problems) == 4


def test_no_marker_and_bad_split_values():
    problems = problems_of([tmpl(prompt_template="{sentence} {label}", total_virtual_tokens=0,
                                 virtual_token_splits=[0])])
    text = "\n".join(problems)
    assert "total_virtual_tokens must be >= 1" in text
    assert "no <|VIRTUAL_PROMPT_0|> marker" in text
    assert "must all be >= 1" in text
    assert "1 entries but prompt_template has 0 virtual marker(s)" in text
    assert len(problems) == 4


def test_parts_of_invalid_template_raise_config_error():
    t = TaskTemplate(**tmpl(prompt_template="<|VIRTUAL_PROMPT_0|> {1x} {label}"))
    with pytest.raises(ConfigError, match=r"task 'task'.*malformed field '\{1x\}'"):
        _ = t.parts


def test_parse_template_gives_each_caller_its_own_lists():
    first, problems = parse_template("<|VIRTUAL_PROMPT_0|> {a} {b")
    first.clear()
    problems.append("mine")
    again, problems_again = parse_template("<|VIRTUAL_PROMPT_0|> {a} {b")
    assert [type(p).__name__ for p in again] == ["Virtual", "Text", "Field", "Text"]
    assert len(problems_again) == 1 and "malformed field" in problems_again[0]


def test_parts_follow_the_splits_and_each_caller_gets_its_own_list():
    """`parts` is built once per (template, splits): a copy with other splits has its own rows."""
    t = TaskTemplate(**tmpl(prompt_template="<|VIRTUAL_PROMPT_0|> {text} <|VIRTUAL_PROMPT_1|> {label}",
                            total_virtual_tokens=5, virtual_token_splits=[3, 2]))
    mine = t.parts
    mine.clear()
    assert [(p.offset, p.count) for p in t.parts if isinstance(p, Virtual)] == [(0, 3), (3, 2)]
    other = t.model_copy(update={"virtual_token_splits": [1, 4]})
    assert [(p.offset, p.count) for p in other.parts if isinstance(p, Virtual)] == [(0, 1), (1, 4)]
    assert [(p.offset, p.count) for p in t.parts if isinstance(p, Virtual)] == [(0, 3), (3, 2)]

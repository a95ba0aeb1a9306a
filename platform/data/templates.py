"""Task templates: parsing, validation and rendering of `<|VIRTUAL_PROMPT_n|>` / `{field}` templates.

A template such as ``"<|VIRTUAL_PROMPT_0|> Hypothesis: {sentence1}, <|VIRTUAL_PROMPT_1|> Answer: {label}"``
is parsed once into parts (text, virtual marker, field). Rendering a record turns the parts into chunks
the tokenizer sees: literal text with the fields filled in, and runs of virtual positions that index
rows of the task's prompt matrix (marker k gets rows ``sum(splits[:k]) .. sum(splits[:k+1]) - 1``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, ValidationError

from promptray.platform.errors import ConfigError

VIRTUAL_MARKER = re.compile(r"<\|VIRTUAL_PROMPT_(\d+)\|>")
FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
TASKNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
RESERVED_FIELDS = {"taskname"}


@dataclass(frozen=True)
class Text:
    """Literal template text."""

    text: str


@dataclass(frozen=True)
class Field:
    """A `{field}` slot, filled from the record."""

    name: str


@dataclass(frozen=True)
class Virtual:
    """A `<|VIRTUAL_PROMPT_n|>` marker: `count` rows of the task's prompt, starting at row `offset`."""

    index: int  # which marker: <|VIRTUAL_PROMPT_index|>
    offset: int = 0  # first row of the task's prompt matrix used here
    count: int = 0  # how many virtual positions


Part = Union[Text, Field, Virtual]


@dataclass(frozen=True)
class Chunk:
    """What one rendered piece of a prompt is: literal text (prompt or answer side) or virtual positions."""

    kind: Literal["prompt", "answer", "virtual"]
    text: str = ""
    offset: int = 0
    count: int = 0


class TaskTemplate(BaseModel):
    """One task of `model.task_templates`, as in NeMo's config (see the spec)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    taskname: str
    prompt_template: str
    total_virtual_tokens: int
    virtual_token_splits: list[int]
    truncate_field: Optional[str] = None
    answer_only_loss: bool = False
    answer_field: Optional[str] = None

    @property
    def parts(self) -> list[Part]:
        """The template as parts, markers annotated with their rows (valid templates only). Built once per
        distinct (prompt_template, virtual_token_splits): rendering asks for them at every record."""
        parts, problems = _annotated(self.prompt_template, tuple(self.virtual_token_splits))
        if problems:
            raise ConfigError([f"task {self.taskname!r}: {p}" for p in problems])
        return list(parts)

    @property
    def fields(self) -> list[str]:
        """The `{field}` names of prompt_template, in order (repeats kept)."""
        return [p.name for p in parse_template(self.prompt_template)[0] if isinstance(p, Field)]

    @property
    def target_field(self) -> Optional[str]:
        """The field a model generates at inference: answer_field, else a field that ends the template."""
        if self.answer_field:
            return self.answer_field
        parts = parse_template(self.prompt_template)[0]
        return parts[-1].name if parts and isinstance(parts[-1], Field) else None

    def render(self, record: dict[str, Any], inference: bool = False) -> list[Chunk]:
        """Chunks of one record. See `render_parts`."""
        return render_parts(self.parts, record, self.target_field, inference)


def parse_template(template: str) -> tuple[list[Part], list[str]]:
    """Split a template into parts; return (parts, problems). Markers are not yet given rows. Parsed once
    per distinct template (rendering calls this for every record)."""
    parts, problems = _parse_cached(template)
    return list(parts), list(problems)


@functools.lru_cache(maxsize=256)
def _parse_cached(template: str) -> tuple[tuple[Part, ...], tuple[str, ...]]:
    parts, problems = _parse(template)
    return tuple(parts), tuple(problems)


@functools.lru_cache(maxsize=256)
def _annotated(template: str, splits: tuple[int, ...]) -> tuple[tuple[Part, ...], tuple[str, ...]]:
    """`TaskTemplate.parts` of a template and its splits (frozen parts: the tuple is shared), and its problems."""
    parts, problems = _parse_cached(template)
    if problems:
        return (), problems
    out, offset = [], 0
    for p in parts:
        if isinstance(p, Virtual):
            count = splits[p.index]
            p = Virtual(p.index, offset, count)
            offset += count
        out.append(p)
    return tuple(out), ()


def _parse(template: str) -> tuple[list[Part], list[str]]:
    parts: list[Part] = []
    problems: list[str] = []
    pos = 0
    for m in VIRTUAL_MARKER.finditer(template):
        parts += _parse_fields(template[pos:m.start()], problems)
        parts.append(Virtual(int(m.group(1))))
        pos = m.end()
    parts += _parse_fields(template[pos:], problems)
    if "<|VIRTUAL_PROMPT" in VIRTUAL_MARKER.sub("", template):
        problems.append("prompt_template has a malformed virtual marker; write it as <|VIRTUAL_PROMPT_0|>")
    return parts, problems


def _parse_fields(text: str, problems: list[str]) -> list[Part]:
    parts: list[Part] = []
    buf, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch == "{":
            end = text.find("}", i)
            name = text[i + 1:end] if end != -1 else None
            if name is None or not FIELD_NAME.fullmatch(name):
                shown = text[i:end + 1] if end != -1 else text[i:i + 20]
                problems.append(f"prompt_template has a malformed field {shown!r}; fields look like "
                                "{name} with a Python identifier inside")
                i = end + 1 if end != -1 else len(text)
                continue
            if buf:
                parts.append(Text("".join(buf)))
                buf = []
            parts.append(Field(name))
            i = end + 1
        elif ch == "}":
            problems.append("prompt_template has a '}' without a matching '{'")
            i += 1
        else:
            buf.append(ch)
            i += 1
    if buf:
        parts.append(Text("".join(buf)))
    return parts


def template_problems(t: TaskTemplate) -> list[str]:
    """Every semantic problem of one template (types are already checked by pydantic)."""
    parts, problems = parse_template(t.prompt_template)
    markers = [p.index for p in parts if isinstance(p, Virtual)]
    fields = [p.name for p in parts if isinstance(p, Field)]
    if not TASKNAME.fullmatch(t.taskname):
        problems.append(f"taskname {t.taskname!r} must be 1-128 letters, digits, '_', '.', '-' "
                        "(starting with a letter or digit)")
    problems += _split_problems(t, markers)
    if reserved := RESERVED_FIELDS.intersection(fields):
        problems.append(f"prompt_template uses reserved field(s) {sorted(reserved)}; rename them")
    if t.truncate_field is not None and t.truncate_field not in fields:
        problems.append(f"truncate_field {t.truncate_field!r} is not a field of prompt_template "
                        f"(fields: {fields}); name one of them or set it to null")
    problems += _answer_problems(t, parts, fields)
    return problems


def _split_problems(t: TaskTemplate, markers: list[int]) -> list[str]:
    problems = []
    if t.total_virtual_tokens < 1:
        problems.append(f"total_virtual_tokens must be >= 1, got {t.total_virtual_tokens}")
    if markers != list(range(len(markers))):
        problems.append(f"virtual markers must be numbered 0..k-1 in order of appearance, got "
                        f"{[f'<|VIRTUAL_PROMPT_{m}|>' for m in markers]}")
    if not markers:
        problems.append("prompt_template has no <|VIRTUAL_PROMPT_0|> marker; add one where the "
                        "virtual tokens go (usually at the start)")
    if len(t.virtual_token_splits) != len(markers):
        problems.append(f"virtual_token_splits {t.virtual_token_splits} has {len(t.virtual_token_splits)} "
                        f"entries but prompt_template has {len(markers)} virtual marker(s); give one split "
                        "per marker")
    if any(s < 1 for s in t.virtual_token_splits):
        problems.append(f"virtual_token_splits {t.virtual_token_splits} must all be >= 1")
    if sum(t.virtual_token_splits) != t.total_virtual_tokens:
        problems.append(f"virtual_token_splits {t.virtual_token_splits} sum to "
                        f"{sum(t.virtual_token_splits)} but total_virtual_tokens is "
                        f"{t.total_virtual_tokens}; make them add up")
    return problems


def _answer_problems(t: TaskTemplate, parts: list[Part], fields: list[str]) -> list[str]:
    problems = []
    if t.answer_only_loss and not t.answer_field:
        problems.append("answer_only_loss is true but answer_field is not set; name the answer field")
    if t.answer_field is not None:
        if t.answer_field not in fields:
            problems.append(f"answer_field {t.answer_field!r} is not a field of prompt_template "
                            f"(fields: {fields})")
        elif t.answer_only_loss and not _ends_with_field(parts, t.answer_field):
            problems.append(f"answer_field {{{t.answer_field}}} must be at the end of prompt_template "
                            "when answer_only_loss is true (only whitespace may follow it)")
        if fields.count(t.answer_field) > 1:
            problems.append(f"answer_field {{{t.answer_field}}} appears more than once in prompt_template")
        if t.answer_field == t.truncate_field:
            problems.append(f"answer_field and truncate_field are both {t.answer_field!r}; the answer "
                            "must never be truncated, pick another truncate_field")
    return problems


def _ends_with_field(parts: list[Part], name: str) -> bool:
    tail = [p for p in parts if not (isinstance(p, Text) and not p.text.strip())]
    return bool(tail) and isinstance(tail[-1], Field) and tail[-1].name == name


def validate_task_templates(raw: Iterable[Any], where: str = "model.task_templates") -> list[TaskTemplate]:
    """Parse and check a list of task templates; raise ConfigError listing every problem at once."""
    templates, problems, seen = [], [], {}
    for i, item in enumerate(raw):
        name = item.get("taskname", f"#{i}") if isinstance(item, dict) else f"#{i}"
        label = f"{where}[{i}] (task {name!r})"
        try:
            t = item if isinstance(item, TaskTemplate) else TaskTemplate.model_validate(item)
        except ValidationError as e:
            problems += [f"{label}.{_loc(err)}: {err['msg']} (got {_short(err.get('input'))})"
                         for err in e.errors()]
            continue
        problems += [f"{label}: {p}" for p in template_problems(t)]
        if t.taskname in seen:
            problems.append(f"{label}: taskname {t.taskname!r} is already used by {where}[{seen[t.taskname]}]; "
                            "tasknames must be unique")
        seen.setdefault(t.taskname, i)
        templates.append(t)
    if problems:
        raise ConfigError(problems, title="invalid task templates")
    return templates


def _loc(err: dict) -> str:
    return ".".join(str(x) for x in err.get("loc", ())) or "(template)"


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def render_parts(parts: list[Part], record: dict[str, Any], target: Optional[str],
                 inference: bool) -> list[Chunk]:
    """Fill a record into the template parts.

    Training: every field must be present. The text is split where the target field starts: the prompt
    side keeps the text before it with trailing whitespace removed, the answer side starts with that
    whitespace, so the prompt tokenizes the same way at training and at inference.
    Inference: the prompt ends where the target field starts (it is never fed, even if present); any
    other field missing from the record is rendered as empty text and the template goes on, so the prompt
    still ends where the answer starts (NeMo's rule: `GPTPromptLearningDataset._insert_text_in_template`
    replaces a missing field by ""). E.g. ``" Context: {context} Question: {question} Answer: {answer}"``
    without `question` gives ``" Context: c Question:  Answer:"``.
    """
    cut = _cut_index(parts, target) if inference else len(parts)
    chunks: list[Chunk] = []
    text, answer = [], None
    for p in parts[:cut]:
        if isinstance(p, Virtual):
            _flush(chunks, text, answer)
            text, answer = [], None
            chunks.append(Chunk("virtual", offset=p.offset, count=p.count))
        elif isinstance(p, Field) and p.name == target and answer is None:
            answer = [_value(record, p.name)]
        elif answer is not None:
            answer.append(p.text if isinstance(p, Text) else _value(record, p.name))
        else:
            text.append(p.text if isinstance(p, Text) else str(record.get(p.name, "")))
    if inference:
        text = ["".join(text).rstrip()]
    _flush(chunks, text, answer)
    return chunks


def _cut_index(parts: list[Part], target: Optional[str]) -> int:
    """Index where an inference prompt ends: the target field (the end when there is none)."""
    return next((i for i, p in enumerate(parts) if isinstance(p, Field) and p.name == target), len(parts))


def constant_start(parts: list[Part]) -> list[Part]:
    """The parts before the first field: what every inference prompt of the template starts with."""
    first = next((i for i, p in enumerate(parts) if isinstance(p, Field)), len(parts))
    return parts[:first]


def _value(record: dict[str, Any], name: str) -> str:
    return str(record[name])


def _flush(chunks: list[Chunk], text: list[str], answer: Optional[list[str]]) -> None:
    prompt = "".join(text)
    if answer is not None:
        stripped = prompt.rstrip()
        answer_text = prompt[len(stripped):] + "".join(answer)
        prompt = stripped
    if prompt:
        chunks.append(Chunk("prompt", text=prompt))
    if answer is not None and answer_text:
        chunks.append(Chunk("answer", text=answer_text))

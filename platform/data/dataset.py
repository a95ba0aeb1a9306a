"""Prompt-learning datasets: records from dicts or .json/.jsonl files, tokenized through task templates.

Each example becomes token ids where virtual positions hold a placeholder id, plus `virtual_ids`
(the row of the task's prompt matrix at that position, -1 for real tokens) and a loss mask. Because
virtual positions are carried per position, one batch can mix tasks with any virtual-token counts.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from promptray.platform.data.templates import Chunk, TaskTemplate
from promptray.platform.errors import DatasetError

log = logging.getLogger(__name__)

Source = Union[str, os.PathLike, dict, "Record"]  # a Record already read passes through with its origin
MAX_SHOWN_PROBLEMS = 20


@dataclass
class Record:
    """One data record (a JSON object, with its `taskname`) and where it came from, for messages."""

    data: dict[str, Any]
    origin: str  # "file.jsonl:12" or "records[3]"


@dataclass
class Example:
    """One tokenized record: per-position lists of equal length T (no padding; `collate` pads them)."""

    taskname: str
    input_ids: list[int]  # virtual positions hold the pad id
    virtual_ids: list[int]  # row of the task's prompt at each position, -1 for real tokens
    loss_mask: list[int]  # 1 where the token is a training target
    origin: str = ""
    reference: Optional[str] = None  # the target field's value, when the record has it
    record: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class DatasetStats:
    """Per task: examples kept, truncated (truncate_field cut to fit max_seq_length) and dropped (too long)."""

    kept: Counter = field(default_factory=Counter)
    truncated: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)
    # per task, the most tokens a dropped example needs even with its truncate_field cut to nothing (its
    # whole length when the template has none): what the limit had to hold
    uncut: Counter = field(default_factory=Counter)

    def dropped_reasons(self, templates: Mapping[str, TaskTemplate], limit: str) -> str:
        """Why examples were dropped, per task, naming the part that cannot be cut and `limit` (e.g.
        "model.encoder_seq_length=16"); the fix suggests a truncate_field only to a template without one."""
        out = []
        for name, n in sorted(self.dropped.items()):
            t, need = templates[name], self.uncut[name]
            if t.truncate_field:
                out.append(f"task {name!r}: {n} example(s) need up to {need} tokens even with truncate_field "
                           f"{t.truncate_field!r} cut to nothing ({t.total_virtual_tokens} virtual tokens, the "
                           f"template's text and the other fields), more than {limit}")
            else:
                out.append(f"task {name!r}: {n} example(s) of up to {need} tokens ({t.total_virtual_tokens} virtual) "
                           f"are longer than {limit}, and its template has no truncate_field to cut (set one)")
        return "; ".join(out)

    def summary(self) -> str:
        """Each task's counts on one line, e.g. "squad: 90 kept, 3 truncated, 1 dropped"."""
        tasks = sorted(set(self.kept) | set(self.dropped))
        return ", ".join(f"{t}: {self.kept[t]} kept, {self.truncated[t]} truncated, {self.dropped[t]} dropped"
                         for t in tasks)


# ----------------------------------------------------------------------------- reading records

def read_records(sources: Iterable[Source], *, endpoint_url: Optional[str] = None) -> list[Record]:
    """Records from dicts and .json / .jsonl files (local, file:// or s3://BUCKET/KEY), in order (Records already
    read are kept as they are, so a caller reads each file once). Bad JSON names the file and line.
    `endpoint_url`: the S3-compatible server of s3:// files (None: boto3's own lookup)."""
    if isinstance(sources, (str, os.PathLike, dict)):
        sources = [sources]
    records: list[Record] = []
    for i, src in enumerate(sources):
        if isinstance(src, Record):
            records.append(src)
        elif isinstance(src, dict):
            records.append(Record(src, f"records[{i}]"))
        else:
            records += _parse_file(*_read_text(src, endpoint_url))
    return records


def _read_text(src: Union[str, os.PathLike], endpoint_url: Optional[str]) -> tuple[str, str]:
    """(name, text) of a local data file or an s3://bucket/key object."""
    name = os.fspath(src)
    if name.startswith("s3://"):
        from promptray.platform.storage.s3 import read_uri  # boto3 only when S3 is used

        data = read_uri(name, endpoint_url=endpoint_url)
        if data is None:
            raise DatasetError(f"data file {name!r} does not exist; check the bucket and key")
        return name, data.decode("utf-8-sig")
    path = Path(name.removeprefix("file://"))
    if not path.is_file():
        raise DatasetError(f"data file {name!r} does not exist (cwd {os.getcwd()}); check the path")
    return name, path.read_text(encoding="utf-8-sig")  # -sig: tolerate a byte-order mark (Windows editors)


def _parse_file(path: str, text: str) -> list[Record]:
    if path.endswith(".json") and text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}:{e.lineno}: invalid JSON ({e.msg}, column {e.colno})") from None
        return [Record(item, f"{path}[{i}]") for i, item in enumerate(items)]
    records = []
    # split on "\n" only: str.splitlines() also splits on U+2028/U+0085, which JSON strings may hold raw
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            records.append(Record(json.loads(line), f"{path}:{lineno}"))
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}:{lineno}: invalid JSON ({e.msg}, column {e.colno}); each line of a "
                               ".jsonl file must be one JSON object") from None
    return records


def check_records(records: list[Record], templates: dict[str, TaskTemplate], inference: bool,
                  unknown_hint: str = "") -> None:
    """Raise DatasetError listing every malformed record (missing taskname, unknown task, fields, types).
    `unknown_hint` is added to unknown-task problems (e.g. which tasks this run tunes)."""
    problems = []
    for r in records:
        problems += [f"{r.origin}: {p}" + (unknown_hint if p.startswith("unknown taskname") else "")
                     for p in _record_problems(r.data, templates, inference)]
    if problems:
        shown = problems[:MAX_SHOWN_PROBLEMS]
        more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        raise DatasetError(f"{len(problems)} malformed record(s):\n" + "\n".join(f"  - {p}" for p in shown) + more)


def _record_problems(data: Any, templates: dict[str, TaskTemplate], inference: bool) -> list[str]:
    if not isinstance(data, dict):
        return [f"expected a JSON object, got {type(data).__name__}"]
    name = data.get("taskname")
    if name is None:
        return ["missing 'taskname'; every record names its task"]
    if not isinstance(name, str) or name not in templates:
        return [f"unknown taskname {name!r}; known tasks: {sorted(templates)}"]
    template, problems = templates[name], []
    for f in template.fields:
        if f not in data:
            if not inference:
                problems.append(f"task {name!r} record is missing field {f!r} (template needs {template.fields})")
        elif not isinstance(data[f], (str, int, float, bool)) or data[f] is None:
            problems.append(f"field {f!r} must be a string or number, got {type(data[f]).__name__}")
    return problems


# ----------------------------------------------------------------------------- tokenization

@dataclass
class Tokenization:
    """The tokenizer facts the encoder needs (any Hugging Face tokenizer provides them), and the token ids of
    the texts encoded so far (`prime` fills them in one batch call)."""

    tokenizer: Any
    pad_id: int
    eos_id: int
    bos_id: Optional[int]
    known: dict[str, list[int]] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, tokenizer) -> Tokenization:
        """The tokenizer with its pad, EOS and BOS ids (BOS may be None)."""
        return cls(tokenizer, tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` without special tokens ([] for empty text)."""
        if not text:
            return []
        ids = self.known.get(text)
        return list(ids) if ids is not None else self.tokenizer.encode(text, add_special_tokens=False)

    def prime(self, texts: Iterable[str]) -> None:
        """Encode the distinct non-empty `texts` not yet known in one batch call (a fast tokenizer encodes a
        batch in parallel, without a Python round trip per text); `encode` then returns the same ids."""
        new = [t for t in dict.fromkeys(texts) if t and t not in self.known]
        if new:
            self.known.update(zip(new, self.tokenizer(new, add_special_tokens=False)["input_ids"]))


def encode_chunks(chunks: list[Chunk], tok: Tokenization, answer_only_loss: bool, add_bos: bool,
                  add_eos: bool) -> tuple[list[int], list[int], list[int]]:
    """(input_ids, virtual_ids, loss_mask) of rendered chunks."""
    ids, vids, loss = [], [], []
    if add_bos and tok.bos_id is not None:
        ids, vids, loss = [tok.bos_id], [-1], [0]
    for c in chunks:
        if c.kind == "virtual":
            ids += [tok.pad_id] * c.count
            vids += list(range(c.offset, c.offset + c.count))
            loss += [0] * c.count
        else:
            t = tok.encode(c.text)
            ids += t
            vids += [-1] * len(t)
            loss += [int(c.kind == "answer" or not answer_only_loss)] * len(t)
    if add_eos:
        ids, vids, loss = ids + [tok.eos_id], vids + [-1], loss + [1]
    return ids, vids, loss


def encode_record(template: TaskTemplate, record: Record, tok: Tokenization, max_seq_length: int,
                  add_eos: bool = True, add_bos: bool = False, inference: bool = False,
                  ) -> tuple[Optional[Example], bool]:
    """Encode one record; truncate `truncate_field` from its end to fit. Returns (example or None, truncated)."""
    data, truncated = dict(record.data), False
    for _ in range(6):
        chunks = template.render(data, inference=inference)
        ids, vids, loss = encode_chunks(chunks, tok, template.answer_only_loss, add_bos,
                                        add_eos and not inference)
        overflow = len(ids) - max_seq_length
        if overflow <= 0:
            target = template.target_field
            ref = str(record.data[target]) if target and target in record.data else None
            return Example(template.taskname, ids, vids, loss, record.origin, ref, record.data), truncated
        field_name = template.truncate_field
        if field_name is None or field_name not in data:
            return None, False
        field_ids = tok.encode(str(data[field_name]))
        if overflow >= len(field_ids):
            return None, False
        kept = tok.tokenizer.decode(field_ids[:len(field_ids) - overflow])
        data[field_name] = kept.rstrip("\ufffd")  # a cut inside a multi-byte character decodes to U+FFFD
        truncated = True
    return None, False


UNLIMITED = 10**9  # a length limit that never cuts


def shortest_example(template: TaskTemplate, tokenizer, *, add_bos: bool, add_eos: bool, inference: bool,
                     record: Optional[dict[str, Any]] = None) -> int:
    """Tokens of `template` with every field empty (or `record`'s values for the fields it has): its virtual
    tokens, its own text (tokenized as encode_record does) and BOS/EOS as given. The least any example of
    the template needs; with `record`, what that record needs when its other fields are empty."""
    data = {f: "" for f in template.fields} | dict(record or {})
    ids = encode_chunks(template.render(data, inference=inference), Tokenization.of(tokenizer),
                        template.answer_only_loss, add_bos, add_eos and not inference)[0]
    return len(ids)


def _uncut_length(template: TaskTemplate, record: Record, tok: Tokenization, add_eos: bool, add_bos: bool,
                  inference: bool) -> int:
    """Tokens a record needs with its truncate_field (if any) cut to nothing."""
    data = dict(record.data)
    if template.truncate_field:
        data[template.truncate_field] = ""
    return shortest_example(template, tok.tokenizer, add_bos=add_bos, add_eos=add_eos, inference=inference,
                            record=data)


def build_examples(sources: Iterable[Source], templates: list[TaskTemplate], tokenizer, max_seq_length: int,
                   add_eos: bool = True, add_bos: Union[bool, Mapping[str, bool]] = False, inference: bool = False,
                   unknown_hint: str = "", *, endpoint_url: Optional[str] = None,
                   tokenization: Optional[Tokenization] = None) -> tuple[list[Example], DatasetStats]:
    """Read, check and encode records. Over-long examples that cannot be truncated are dropped and counted.
    `add_bos`: one value for every task, or taskname -> value (tasks of a mixed batch may differ).
    `endpoint_url`: the S3-compatible server of s3:// sources (see `read_records`).
    `tokenization`: `Tokenization.of(tokenizer)` kept by a caller that encodes the same texts again (a search
    pack's candidates): texts it already knows are not tokenized again. ValueError when it wraps another
    tokenizer."""
    if tokenization is not None and tokenization.tokenizer is not tokenizer:
        raise ValueError("build_examples: `tokenization` wraps another tokenizer than `tokenizer`")
    by_name = {t.taskname: t for t in templates}
    records = read_records(sources, endpoint_url=endpoint_url)
    check_records(records, by_name, inference, unknown_hint)
    tok = Tokenization.of(tokenizer) if tokenization is None else tokenization
    stats, examples = DatasetStats(), []
    tok.prime(c.text for r in records for c in by_name[r.data["taskname"]].render(r.data, inference=inference)
              if c.kind != "virtual")
    for r in records:
        name = r.data["taskname"]
        bos = add_bos[name] if isinstance(add_bos, Mapping) else add_bos
        ex, truncated = encode_record(by_name[name], r, tok, max_seq_length, add_eos, bos, inference)
        if ex is None:
            stats.dropped[name] += 1
            need = _uncut_length(by_name[name], r, tok, add_eos, bos, inference)
            stats.uncut[name] = max(stats.uncut[name], need)
            continue
        stats.kept[name] += 1
        stats.truncated[name] += int(truncated)
        examples.append(ex)
    if sum(stats.dropped.values()):
        log.warning("dropped over-long examples: %s",
                    stats.dropped_reasons(by_name, f"max_seq_length={max_seq_length}"))
    return examples, stats

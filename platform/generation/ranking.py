"""A validation objective cheap and stable enough to rank search candidates.

For a task with a closed label set (a configured list, or the few answers its data repeats), the accuracy is
label ranking: every label is scored as the answer after the prompt (the sum of the log-probabilities of its
tokens, and of EOS when the task trains with EOS; no generation: the record's prompt runs once, each label's
answer against its KV cache) and the best-scored label is the prediction (lm-evaluation-harness's
multiple-choice `acc`; Brown et al. 2020, "Language Models are Few-Shot Learners", section 2.4). Otherwise it
is greedy exact match (`inference.exact_match`) of up to `max_new_tokens` tokens. Either way on a fixed sample
of the validation records (`sample_records`), so every candidate is judged on the same examples.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Optional

from promptray.platform.data.dataset import Example, Record, Tokenization, encode_record
from promptray.platform.data.templates import TaskTemplate
from promptray.platform.errors import DatasetError
from promptray.platform.generation.decode import GenerationParams
from promptray.platform.generation.inference import answer_logprobs, exact_match, predict, prepare
from promptray.platform.generation.loading import PromptModel

MIN_REPEATS = 2.0  # a closed label set: its labels occur at least this often on average


def answers(template: TaskTemplate, records: Sequence[Record]) -> list[str]:
    """The target-field values (`template.target_field`) of the task's records that have one, as text."""
    target = template.target_field
    return [str(r.data[target]) for r in records
            if target and r.data.get("taskname") == template.taskname and target in r.data]


def closed_labels(template: TaskTemplate, records: Sequence[Record], max_labels: int) -> Optional[list[str]]:
    """The task's label set as seen in `records` (training and validation): its distinct answers in first-seen
    order when there are 2..`max_labels` of them and they repeat (each occurs MIN_REPEATS times on average);
    None for free-form answers (then exact match is the objective)."""
    seen = answers(template, records)
    distinct = list(dict.fromkeys(seen))
    if 2 <= len(distinct) <= max_labels and len(seen) >= MIN_REPEATS * len(distinct):
        return distinct
    return None


def sample_records(records: Sequence[Record], n: Optional[int], seed: int) -> list[Record]:
    """`n` of `records` drawn without replacement with `seed` (in their file order), or all when `n` is None
    or not below their number: the fixed validation sample every candidate is judged on."""
    if n is None or n >= len(records):
        return list(records)
    keep = sorted(random.Random(seed).sample(range(len(records)), n))
    return [records[i] for i in keep]


@dataclass
class RankingSet:
    """Label-ranking examples of one task: `examples[r * L + j]` is record r with `labels[j]` as its answer
    (loss_mask on the answer tokens, EOS included when trained with it); `gold[r]` is the index of record r's
    own answer in `labels` (-1: not among them, never right)."""

    labels: list[str]
    examples: list[Example]
    gold: list[int]


def ranking_set(engine: PromptModel, task: str, records: Sequence[Record], labels: list[str],
                max_seq_length: int) -> RankingSet:
    """The ranking examples of `records` (of task `task`) at most `max_seq_length` tokens long, encoded as the
    task trains (`engine.encodings`: BOS, EOS). DatasetError when no record fits with every label."""
    template = engine.templates[task]
    scored = template.model_copy(update={"answer_only_loss": True})  # the loss mask marks the answer only
    enc = engine.encodings[task]
    tok, target = Tokenization.of(engine.tokenizer), template.target_field
    examples, gold = [], []
    for r in records:
        if r.data.get("taskname") != task or target not in r.data:
            continue
        row = [encode_record(scored, Record({**r.data, target: lab}, r.origin), tok, max_seq_length,
                             add_eos=enc.add_eos, add_bos=enc.add_bos)[0] for lab in labels]
        if all(e is not None for e in row):
            examples += row
            answer = str(r.data[target])
            gold.append(labels.index(answer) if answer in labels else -1)
    if not gold:
        raise DatasetError(f"task {task!r}: no validation record to rank fits {max_seq_length} tokens with "
                           f"every label of {labels}")
    if all(g < 0 for g in gold):  # every record would score 0: the labels are not the task's answers
        seen = sorted({str(r.data[target]) for r in records if target in r.data})
        raise DatasetError(f"task {task!r}: none of the {len(gold)} validation records' answers is among the "
                           f"labels {labels} (answers seen: {seen[:6]}{' ...' if len(seen) > 6 else ''}); give "
                           "labels spelled as the answers are")
    return RankingSet(list(labels), examples, gold)


def label_ranking_accuracy(engine: PromptModel, rs: RankingSet, batch_size: int = 16) -> float:
    """The share of records whose own answer gets the highest answer log-probability among `rs.labels`
    (see `label_ranking_predictions`)."""
    preds = label_ranking_predictions(engine, rs, batch_size)
    return sum(p == g for p, g in zip(preds, rs.gold)) / len(rs.gold)


def label_ranking_predictions(engine: PromptModel, rs: RankingSet, batch_size: int = 16) -> list[int]:
    """Per record (in `rs` order), the index in `rs.labels` of its highest-scored label (the first on a tie).
    `batch_size` records per forward, each with all its labels (its L rows share one pass of its prompt);
    records run shortest first (`by_length`), so a forward pads its records to similar lengths."""
    n, order = len(rs.labels), by_length(rs)
    rows = [rs.examples[r * n + j] for r in order for j in range(n)]
    scores = answer_logprobs(engine.model, rows, engine.tokenizer.pad_token_id, batch_size * n)
    preds = [0] * len(order)
    for k, r in enumerate(order):
        preds[r] = max(range(n), key=lambda j: scores[k * n + j])
    return preds


def by_length(rs: RankingSet) -> list[int]:
    """The records' indices, shortest first (by their longest labelled row; ties in record order)."""
    n = len(rs.labels)
    return sorted(range(len(rs.gold)), key=lambda r: max(len(e) for e in rs.examples[r * n:(r + 1) * n]))


class ValidationObjective:
    """The accuracy of one task's current prompt on a fixed validation sample (`kind`: "label_ranking" when
    `labels` is given, else "exact_match"). Examples are prepared once; calling it scores the prompt the
    model holds now (in eval mode; the model's train/eval mode is restored).

    `engine` holds the task (`engine.templates[task]`, its prompt in the bank under that name); `records`
    the validation sample; `max_seq_length` the longest ranking example; `max_new_tokens` the greedy
    answer length (exact match; `key` names it in errors). Errors: DatasetError (nothing to rank, records
    that leave no room to generate), ConfigError (no room at all for `max_new_tokens`)."""

    def __init__(self, engine: PromptModel, task: str, records: Sequence[Record], labels: Optional[list[str]], *,
                 max_seq_length: int, max_new_tokens: int = 8, batch_size: int = 16,
                 key: str = "search.max_new_tokens"):
        self.engine, self.batch_size, self.tokens = engine, batch_size, max_new_tokens
        self.kind: Literal["label_ranking", "exact_match"] = "label_ranking" if labels else "exact_match"
        mine = [r for r in records if r.data.get("taskname") == task]
        if labels:
            self.ranking = ranking_set(engine, task, mine, labels, max_seq_length)
        else:
            self.examples = prepare(engine, mine, max_new_tokens, key=key)
            if not self.examples:
                raise DatasetError(f"task {task!r}: no validation record to judge the candidates on; give "
                                   "validation records of the task")

    def __call__(self) -> float:
        model = self.engine.model
        was_training = model.training
        model.eval()
        try:
            if self.kind == "label_ranking":
                return label_ranking_accuracy(self.engine, self.ranking, self.batch_size)
            preds = predict(self.engine, self.examples, GenerationParams(max_new_tokens=self.tokens),
                            batch_size=self.batch_size)
            return sum(bool(exact_match(p, x.reference)) for p, x in zip(preds, self.examples)) / len(preds)
        finally:
            model.train(was_training)

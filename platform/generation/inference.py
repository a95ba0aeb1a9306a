"""Multi-task inference from a prompt table: load the base model once, every task's prompt, mixed batches.

Mirrors NeMo's `megatron_gpt_prompt_learning_eval.py`: data files may mix any tasks of the table (any
virtual-token counts); the target field, when present, is never fed to the model and is kept as the
reference, so the same files give predictions and accuracy.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

from promptray.platform.data.batching import collate, to_device
from promptray.platform.data.dataset import Example, Source, build_examples, shortest_example
from promptray.platform.data.encoding import add_bos_by_task, warn_bos_overrides
from promptray.platform.errors import ConfigError, DatasetError
from promptray.platform.generation.decode import DecodeRow, GenerationParams
from promptray.platform.generation.loading import PromptModel, load_prompt_model
from promptray.platform.generation.logprobs import openai_logprobs
from promptray.platform.generation.scheduler import Limits, Scheduler, run_to_end
from promptray.platform.model.prompt_model import PromptLearningModel
from promptray.platform.table.table import PromptTable

log = logging.getLogger(__name__)


InferenceEngine = PromptModel  # what offline inference runs on: the one loaded-model type (loading.py)


def load_inference_engine(table_uri: str, base_model: Optional[str] = None, tasks: Optional[list[str]] = None,
                          precision: str = "fp32", device: Optional[torch.device] = None, *,
                          endpoint_url: Optional[str] = None) -> PromptModel:
    """`promptray infer`'s model: `load_prompt_model` with `tasks` None or empty meaning every task of the
    table (errors as there: ConfigError for an empty table, BaseModelMismatchError /
    TokenizerMismatchError for a task trained on another model or tokenizer). `endpoint_url`: the
    S3-compatible server of an s3:// table (None: boto3's own lookup)."""
    table = PromptTable(table_uri, endpoint_url=endpoint_url)
    return load_prompt_model(table, base_model, tasks or None, precision, device, setting="gpt_model_file")


def prepare(engine: PromptModel, sources: Iterable[Source], max_new_tokens: int,
            add_bos: Optional[bool] = None, max_seq_length: Optional[int] = None, *,
            key: str = "inference.tokens_to_generate", endpoint_url: Optional[str] = None) -> list[Example]:
    """Inference examples; prompts too long for the model (or for `max_seq_length`, NeMo's cap on prompt +
    generated tokens, when lower) are an error (nothing is dropped silently).

    `add_bos` None (the default): each task's prompts start with BOS exactly when it was trained with
    `model.data.add_bos` (per task: a batch may mix tasks that differ). True/False: for every task, with a
    log.warning naming each task of `sources` trained otherwise. ConfigError up front when max_new_tokens
    (tokens generated per record) leaves a task's template (virtual tokens + its own text) no room in the
    model's positions; DatasetError naming the part that cannot be cut when records do not fit. `key`: the
    config key that set max_new_tokens, named in messages (NeMo's inference.tokens_to_generate by default,
    or search.max_new_tokens). `endpoint_url`: the S3-compatible
    server of s3:// sources (None: boto3's own lookup)."""
    positions = min(engine.model.max_positions, max_seq_length or engine.model.max_positions)
    bos = add_bos_by_task(engine.encodings, engine.templates, add_bos)
    check_generation_room(engine, max_new_tokens, bos, key)
    limit = positions - max_new_tokens
    examples, stats = build_examples(sources, list(engine.templates.values()), engine.tokenizer, limit,
                                     add_eos=False, add_bos=bos, inference=True, endpoint_url=endpoint_url)
    warn_bos_overrides(engine.encodings, [e.taskname for e in examples], add_bos)
    dropped = sum(stats.dropped.values())
    if dropped:
        cap = (f"max_seq_length={positions}" if positions < engine.model.max_positions
               else f"the model's {positions} positions")
        why = stats.dropped_reasons(engine.templates, f"{cap} minus {key} {max_new_tokens} = {limit}")
        raise DatasetError(f"{dropped} record(s) do not fit: {why}; shorten those records or lower {key}")
    return examples


def check_generation_room(engine: InferenceEngine, max_new_tokens: int, bos: dict[str, bool],
                          key: str = "inference.tokens_to_generate") -> None:
    """ConfigError when max_new_tokens plus a task's shortest prompt (virtual tokens, the template's
    text up to the answer, BOS as trained) exceed the model's positions, naming the most it may be (as the
    server answers for max_tokens)."""
    positions, problems = engine.model.max_positions, []
    for name, t in engine.templates.items():
        need = shortest_example(t, engine.tokenizer, add_bos=bos[name], add_eos=False, inference=True)
        if max_new_tokens + need > positions:
            problems.append(f"{key}: {max_new_tokens} + {t.total_virtual_tokens} "
                            f"virtual tokens + {need - t.total_virtual_tokens} tokens of template text"
                            f"{' and BOS' if bos[name] else ''} (task {name!r}) exceed the model's {positions} "
                            f"positions; use at most {positions - need} (less for long inputs)")
    if problems:
        raise ConfigError(problems)


@dataclass
class Generated:
    """One example's generation: its text, token ids (EOS / stop id left out), and, when asked, the
    log-probabilities of those tokens as OpenAI's legacy `logprobs` object (platform/generation/logprobs.py)."""

    text: str
    token_ids: list[int]
    logprobs: Optional[dict] = None


def predict_rows(engine: PromptModel, examples: Sequence[Example], params: GenerationParams,
                 batch_size: int = 8, progress: bool = False, desc: str = "generating") -> list[Generated]:
    """Each example's generation (input order kept), through the scheduler that serving runs
    (platform/generation/scheduler.py): at most `batch_size` rows decode at once, of any tasks, shortest
    prompts first; greedy decoding is continuous (a row that ends makes room for the next at once). Sampling
    draws from one generator seeded with `params.seed` per group of `batch_size` consecutive examples, run as
    static batches, so a seeded run gives the same texts as before the scheduler. `desc` labels the progress
    bar (examples finished)."""
    tok = engine.tokenizer
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]))
    rows: dict[int, DecodeRow] = {}
    for s in range(0, len(order), batch_size):
        gen = torch.Generator(engine.model.device).manual_seed(params.seed) if params.seed is not None else None
        rows.update({i: DecodeRow(params, tok.eos_token_id, generator=gen) for i in order[s:s + batch_size]})
    limits = Limits(max_rows=batch_size, kv_budget_tokens=2**62, max_waiting=batch_size)
    scheduler = Scheduler(engine.model, tok.pad_token_id, limits=limits,
                          policy="continuous" if params.is_greedy else "static")
    with tqdm(total=len(examples), desc=desc, disable=not progress, unit="example") as bar:
        for out in run_to_end(scheduler, [(i, examples[i], rows[i]) for i in order]):
            if out.error is not None:
                raise out.error
            bar.update(int(out.event.finish_reason is not None))
    return [_generated(rows[i], engine.decode) for i in range(len(examples))]


def _generated(row: DecodeRow, decode) -> Generated:
    ids = row.output_ids
    logprobs = openai_logprobs(row.trace[:len(ids)], ids, decode) if row.params.logprobs is not None else None
    return Generated(decode(ids), ids, logprobs)


def predict(engine: PromptModel, examples: Sequence[Example], params: GenerationParams, batch_size: int = 8,
            progress: bool = False, desc: str = "generating") -> list[str]:
    """Generated text per example (see `predict_rows`)."""
    return [g.text for g in predict_rows(engine, examples, params, batch_size, progress, desc)]


def text_ids(example: Example) -> list[int]:
    """The prompt's real token ids: virtual-token placeholders left out (they are not text)."""
    return [t for t, v in zip(example.input_ids, example.virtual_ids) if v < 0]


def write_pred_file(path: Path, engine: PromptModel, examples: Sequence[Example],
                    generated: Sequence[Generated]) -> None:
    """NeMo's `pred_file_path`: one line per record, the prompt (virtual tokens left out) followed by the
    generated text, decoded together, stripped, newlines replaced by spaces (as NeMo's
    megatron_gpt_prompt_learning_eval.py writes its decoded sentences)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for e, g in zip(examples, generated):
            f.write(engine.decode(text_ids(e) + g.token_ids).strip().replace("\n", " ") + "\n")


def normalize_answer(text: str) -> str:
    """The first line of a generation, trimmed of whitespace and surrounding punctuation, lower-cased."""
    lines = text.strip().splitlines()
    return (lines[0] if lines else "").strip().strip(".,;:!?\"'").strip().lower()


def exact_match(prediction: str, reference: Optional[str]) -> Optional[bool]:
    """Normalized exact match (see `normalize_answer`); None without a reference."""
    if reference is None:
        return None
    return normalize_answer(prediction) == normalize_answer(reference)


def strip_virtual(examples: Sequence[Example]) -> list[Example]:
    """The same examples without virtual tokens: the zero-shot baseline of a template."""
    out = []
    for e in examples:
        keep = [i for i, v in enumerate(e.virtual_ids) if v < 0]
        out.append(Example(e.taskname, [e.input_ids[i] for i in keep], [-1] * len(keep),
                           [e.loss_mask[i] for i in keep], e.origin, e.reference, e.record))
    return out


@torch.no_grad()
def answer_logprobs(model: PromptLearningModel, examples: Sequence[Example], pad_id: int,
                    batch_size: int = 16) -> list[float]:
    """Sum of log-probabilities of each example's target tokens (loss_mask) given the rest
    (`PromptLearningModel.target_logprobs`, `batch_size` consecutive examples per forward). Examples identical
    up to their targets (one record with each candidate answer) run their prompt once when they share a
    forward: keep them consecutive and within one batch (`label_ranking_accuracy` passes whole records)."""
    model.eval()
    out: list[float] = []
    reuse: dict = {}  # the KV caches of shared prompt starts, computed in the first batch (prompts are fixed here)
    for s in range(0, len(examples), batch_size):
        batch = to_device(collate(examples[s:s + batch_size], pad_id), model.device)
        out += model.target_logprobs(batch, reuse=reuse).tolist()
    return out


def write_predictions(path: Path, examples: Sequence[Example], predictions: Sequence[str],
                      versions: dict[str, Optional[str]], *, logprobs: Optional[Sequence[dict]] = None) -> dict:
    """JSON lines: the input record, the prediction, the task version, `logprobs` when given (OpenAI's
    legacy shape: `{"tokens": [str], "token_logprobs": [float], "top_logprobs": [{str: float}],
    "text_offset": [int]}`, one entry per generated token of the prediction), and exact match when known.
    Returns accuracy per task (for records that carry a reference)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    per_task: dict[str, list[bool]] = {}
    with path.open("w") as f:
        for i, (e, pred) in enumerate(zip(examples, predictions)):
            match = exact_match(pred, e.reference)
            if match is not None:
                per_task.setdefault(e.taskname, []).append(match)
            row = {**e.record, "prediction": pred, "task_version": versions.get(e.taskname)}
            if logprobs is not None:
                row["logprobs"] = logprobs[i]
            f.write(json.dumps({**row, **({"correct": match} if match is not None else {})}) + "\n")
    return {t: {"accuracy": sum(v) / len(v), "n": len(v)} for t, v in per_task.items()}

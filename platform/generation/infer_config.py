"""`promptray infer` settings: NeMo's `megatron_gpt_prompt_learning_inference.yaml` runs as written.

    virtual_prompt_model_file=TABLE   (or prompt_table=TABLE)      the prompt table (a path or file:// URI)
    gpt_model_file=MODEL              (or language_model_path=...)  default: the model the prompts were trained on
    data_paths=[a.jsonl,b.jsonl]      records of any tasks in the table, mixed
    pred_file_path=preds.txt          NeMo's output: one line per record, the prompt then the generated text
    output_file=predictions.jsonl     ours: JSON lines with the record, prediction, version, logprobs, correct
    inference.greedy / tokens_to_generate / min_tokens_to_generate / temperature / top_k / top_p /
        repetition_penalty / add_BOS / compute_logprob / batch_size, and ours: seed, top_logprobs
    batch_size=8 (= inference.batch_size = NeMo's global_batch_size / micro_batch_size: one process, one device)
    max_seq_length=N                  NeMo's cap on prompt + generated tokens (default: the model's positions)
    precision=bf16|fp32 (= trainer.precision; fp16 names run as bf16, with a warning)
    accelerator=auto|cpu|gpu (= trainer.accelerator)

NeMo keys with no meaning here (one process, one device, no loggers or data-loader workers) are accepted
and ignored: `NO_MEANING`. Model-parallel sizes must be 1. Any other key is an error with a did-you-mean;
every problem of a config is reported at once (`ConfigError`, exit status 2 from the CLI). The settings are
read by the one config loader (platform/config/loader.py: a YAML file, a dict or nothing, overrides, `${...}`,
NeMo's `???`); the module sits in generation/ because it builds the decode core's `GenerationParams` and picks
a device (model/devices.py).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from promptray.platform.config.checks import normalize_precision, precision_warning
from promptray.platform.config.loader import read_config, validate_config
from promptray.platform.config.overrides import Overrides
from promptray.platform.config.run import accelerator_problem
from promptray.platform.config.types import MAX_COUNT, Float, Int
from promptray.platform.generation.params import MAX_LOGPROBS, RANGES, GenerationParams
from promptray.platform.model.devices import resolve_device

log = logging.getLogger(__name__)

NO_MEANING = ("trainer.devices", "trainer.num_nodes", "trainer.logger", "num_workers",
              "pipeline_model_parallel_split_rank")  # accepted, ignored (README: Inference)
MODEL_PARALLEL = ("tensor_model_parallel_size", "pipeline_model_parallel_size")  # accepted when 1
DEFAULT_BATCH_SIZE = 8
R = RANGES  # the engine's value ranges (platform/generation/params.py)
# keys that set the number of records generated together; NeMo's global/micro batch sizes are that number
# with one process on one device (NeMo's later files: inference.batch_size)
BATCH_KEYS = ("batch_size", "inference.batch_size", "micro_batch_size", "global_batch_size")


class InferenceParams(BaseModel):
    """NeMo's `inference` section (plus `seed` and `top_logprobs`), under NeMo's names; `InferConfig.generation`
    maps it onto the engine's `GenerationParams`, whose `RANGES` bound these fields."""

    model_config = ConfigDict(extra="forbid")
    greedy: bool = True
    tokens_to_generate: Int = Field(30, **R["max_new_tokens"].bounds(le=MAX_COUNT))
    min_tokens_to_generate: Int = Field(0, **R["min_new_tokens"].bounds(le=MAX_COUNT),
                                        description="EOS does not end a row before this many tokens")
    temperature: Float = Field(1.0, **R["temperature"].bounds())
    top_k: Int = Field(0, **R["top_k"].bounds(le=MAX_COUNT))
    top_p: Float = Field(1.0, **R["top_p"].bounds())
    repetition_penalty: Float = Field(1.0, **R["repetition_penalty"].bounds())
    add_BOS: Optional[bool] = None  # None: as the task was trained
    seed: Optional[Int] = Field(None, ge=0, le=2**32 - 1)
    batch_size: Optional[Int] = Field(None, ge=1, le=MAX_COUNT)  # NeMo's place; = the top-level batch_size
    compute_logprob: bool = False  # each generated token's log-probability, in output_file
    top_logprobs: Int = Field(0, **R["logprobs"].bounds())  # with compute_logprob: the k most likely per token
    all_probs: bool = False  # refused when true (see _cross_problems)


class InferTrainer(BaseModel):
    """NeMo's `trainer` section of the inference file: accelerator and precision are honoured."""

    model_config = ConfigDict(extra="forbid")
    accelerator: Optional[str] = None
    precision: Optional[Union[int, str]] = None
    devices: Any = None  # no meaning here
    num_nodes: Any = None  # no meaning here
    logger: Any = None  # no meaning here


class InferConfig(BaseModel):
    """`promptray infer`'s settings in NeMo's layout (megatron_gpt_prompt_learning_inference.yaml) plus ours;
    the module docstring lists the keys. Build it with `load_infer_config` (one ConfigError with every
    problem); `generation()` gives the decode core's GenerationParams."""

    model_config = ConfigDict(extra="forbid")
    virtual_prompt_model_file: Optional[str] = None
    prompt_table: Optional[str] = None
    gpt_model_file: Optional[str] = None
    language_model_path: Optional[str] = None
    data_paths: list[str] = Field(default_factory=list)
    tasks: Optional[list[str]] = None
    inference: InferenceParams = Field(default_factory=InferenceParams)
    trainer: InferTrainer = Field(default_factory=InferTrainer)
    tensor_model_parallel_size: Int = 1
    pipeline_model_parallel_size: Int = 1
    pipeline_model_parallel_split_rank: Any = None  # no meaning here
    num_workers: Any = None  # no meaning here
    batch_size: Optional[Int] = Field(None, ge=1, le=MAX_COUNT)
    global_batch_size: Optional[Int] = Field(None, ge=1, le=MAX_COUNT)  # one process: = batch_size (BATCH_KEYS)
    micro_batch_size: Optional[Int] = Field(None, ge=1, le=MAX_COUNT)  # one process: = batch_size (BATCH_KEYS)
    max_seq_length: Optional[Int] = Field(None, ge=2, le=MAX_COUNT)  # NeMo's cap on prompt + generated tokens
    precision: Optional[Union[int, str]] = None  # default bf16 (also read from trainer.precision)
    accelerator: Optional[str] = None  # default auto (also read from trainer.accelerator)
    output_file: str = "predictions.jsonl"
    pred_file_path: Optional[str] = None
    s3_endpoint_url: Optional[str] = None  # S3-compatible server for s3:// tables and data (default: AWS chain)

    @property
    def table(self) -> Optional[str]:
        """The prompt table: prompt_table, else NeMo's virtual_prompt_model_file."""
        return self.prompt_table or self.virtual_prompt_model_file

    @property
    def base_model(self) -> Optional[str]:
        """The base model: language_model_path, else NeMo's gpt_model_file (None: the one the tasks were trained on)."""
        return self.language_model_path or self.gpt_model_file

    @property
    def resolved_batch_size(self) -> int:
        """Records generated together: the first of batch_size, inference.batch_size, micro_batch_size,
        global_batch_size that is set (one process, one device), else DEFAULT_BATCH_SIZE."""
        return (self.batch_size or self.inference.batch_size or self.micro_batch_size or self.global_batch_size
                or DEFAULT_BATCH_SIZE)

    @property
    def resolved_precision(self) -> str:
        """precision, else trainer.precision, else bf16, as 'bf16' or 'fp32' (fp16 names run as bf16)."""
        return normalize_precision(_first(self.precision, self.trainer.precision, "bf16"))

    @property
    def resolved_accelerator(self) -> str:
        """accelerator, else trainer.accelerator, else 'auto' (model/devices.py maps it to a device)."""
        return _first(self.accelerator, self.trainer.accelerator, "auto")

    def generation(self) -> GenerationParams:
        """The engine's parameters of the `inference` section (NeMo's names -> Hugging Face's)."""
        i = self.inference
        return GenerationParams(max_new_tokens=i.tokens_to_generate, greedy=i.greedy,
                                temperature=i.temperature, top_k=i.top_k, top_p=i.top_p,
                                repetition_penalty=i.repetition_penalty, seed=i.seed,
                                min_new_tokens=i.min_tokens_to_generate,
                                logprobs=i.top_logprobs if i.compute_logprob else None)


def _first(*values):
    return next(v for v in values if v is not None)


def load_infer_config(source: Union[str, Path, dict, None], overrides: Overrides = None) -> InferConfig:
    """The checked settings of a YAML file (NeMo's or ours), a dict or nothing, with dotted overrides, read by
    the one config loader (platform/config/loader.py). Raises one ConfigError with every problem (schema
    ranges, unknown keys, keys left `???`, conflicting or unsupported values) at once."""
    raw, problems = read_config(source, overrides)
    cfg = validate_config(raw, InferConfig, problems + _cross_problems(raw))
    for key in ("precision", "trainer.precision"):
        warning = precision_warning(key, _get(raw, key))
        if warning:
            log.warning(warning)
    cfg.batch_size, cfg.precision = cfg.resolved_batch_size, cfg.resolved_precision
    cfg.accelerator = cfg.resolved_accelerator
    ignored = [k for k in NO_MEANING if _get(raw, k) is not None]
    if ignored:
        log.info("ignoring NeMo keys that have no meaning here: %s", ", ".join(ignored))
    return cfg


def _get(raw: dict, dotted: str):
    node: Any = raw
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _cross_problems(raw: dict) -> list[str]:
    """Problems of keys taken together, found on the raw settings (so they come with the schema's)."""
    problems = []
    if not (raw.get("prompt_table") or raw.get("virtual_prompt_model_file")):
        problems.append("virtual_prompt_model_file: not set; name the prompt table (a path or file:// URI)")
    if not raw.get("data_paths"):
        problems.append("data_paths: empty; list .json/.jsonl files, e.g. data_paths=[a.jsonl,b.jsonl]")
    for key in MODEL_PARALLEL:
        if raw.get(key) not in (None, 1):
            problems.append(f"{key}: got {raw[key]!r}; model parallelism is not supported, set it to 1")
    problems += _batch_problems(raw)
    problems += _precision_problems(raw) + _accelerator_problems(raw) + _inference_problems(raw)
    return problems


def _same(key_a: str, a, key_b: str, b, norm=lambda v: v) -> list[str]:
    try:
        differ = a is not None and b is not None and norm(a) != norm(b)
    except ValueError:
        return []  # a bad value is reported on its own
    return [f"{key_a} ({a!r}) and {key_b} ({b!r}) disagree; give one of them"] if differ else []


def _batch_problems(raw: dict) -> list[str]:
    """The batch-size keys (BATCH_KEYS) all mean the number of records generated together; given values differ."""
    given = {k: _get(raw, k) for k in BATCH_KEYS if _get(raw, k) is not None}
    if len({repr(v) for v in given.values()}) <= 1:
        return []
    named = [f"{k} ({v!r})" for k, v in given.items()]
    shown = ", ".join(named[:-1]) + " and " + named[-1]
    return [f"{shown} disagree; they all set the number of records generated together (one process, one device), "
            "give one of them"]


def _precision_problems(raw: dict) -> list[str]:
    values = {"precision": raw.get("precision"), "trainer.precision": _get(raw, "trainer.precision")}
    problems = []
    for key, value in values.items():
        try:
            value is None or normalize_precision(value)
        except ValueError:
            problems.append(f"{key}: got {value!r}; use 16/bf16 or 32/fp32")
    return problems + _same("precision", values["precision"], "trainer.precision", values["trainer.precision"],
                            normalize_precision)


def _accelerator_problems(raw: dict) -> list[str]:
    top, trainer = raw.get("accelerator"), _get(raw, "trainer.accelerator")
    problems = [p for v in (top, trainer) if v is not None
                for p in [accelerator_problem(v, "accelerator (or trainer.accelerator)")] if p]
    return problems + _same("accelerator", top, "trainer.accelerator", trainer, lambda v: str(v).lower())


def _inference_problems(raw: dict) -> list[str]:
    inf = raw.get("inference") if isinstance(raw.get("inference"), dict) else {}
    problems = []
    if inf.get("all_probs") is True:
        problems.append("inference.all_probs: true is not supported (the full vocabulary distribution of every "
                        "generated token); use inference.compute_logprob=true with inference.top_logprobs=K "
                        f"(K <= {MAX_LOGPROBS}) for each token's log-probability and its K most likely alternatives")
    if inf.get("top_logprobs") and not inf.get("compute_logprob"):
        problems.append("inference.top_logprobs: set, but inference.compute_logprob is not true; set both")
    cap, new = raw.get("max_seq_length"), inf.get("tokens_to_generate", 30)
    if isinstance(cap, int) and isinstance(new, int) and not isinstance(cap, bool) and cap <= new:
        problems.append(f"max_seq_length: got {cap}, not above inference.tokens_to_generate ({new}); it caps "
                        "prompt + generated tokens, so leave room for the prompt (or leave it out)")
    low, high = inf.get("min_tokens_to_generate"), inf.get("tokens_to_generate", 30)
    if isinstance(low, int) and isinstance(high, int) and low > high:
        problems.append(f"inference.min_tokens_to_generate: got {low}, more than inference.tokens_to_generate "
                        f"({high}); lower it or raise tokens_to_generate")
    return problems


def run_inference(cfg: InferConfig, progress: bool = True) -> dict:
    """Predict every record of `data_paths`; write `output_file` (and NeMo's `pred_file_path` when set).
    Loads only the tasks the records use (or `tasks`), on the base model they were trained on by default."""
    from promptray.platform.data.dataset import read_records
    from promptray.platform.generation.inference import (
        load_inference_engine,
        predict_rows,
        prepare,
        write_pred_file,
        write_predictions,
    )
    from promptray.platform.generation.task_selection import tasks_of_records

    records = read_records(cfg.data_paths, endpoint_url=cfg.s3_endpoint_url)  # once: task selection and prepare
    tasks = cfg.tasks or tasks_of_records(cfg.table, records, endpoint_url=cfg.s3_endpoint_url)
    engine = load_inference_engine(cfg.table, cfg.base_model, tasks, cfg.resolved_precision,
                                   resolve_device(cfg.resolved_accelerator), endpoint_url=cfg.s3_endpoint_url)
    params = cfg.generation()
    examples = prepare(engine, records, params.max_new_tokens, add_bos=cfg.inference.add_BOS,
                       max_seq_length=cfg.max_seq_length, endpoint_url=cfg.s3_endpoint_url)
    generated = predict_rows(engine, examples, params, cfg.resolved_batch_size, progress=progress)
    scores = write_predictions(Path(cfg.output_file), examples, [g.text for g in generated], engine.versions,
                               logprobs=[g.logprobs for g in generated] if params.logprobs is not None else None)
    summary = {"output_file": cfg.output_file}
    if cfg.pred_file_path:
        write_pred_file(Path(cfg.pred_file_path), engine, examples, generated)
        summary["pred_file_path"] = cfg.pred_file_path
    return {**summary, "records": len(examples), "versions": engine.versions, "accuracy": scores}

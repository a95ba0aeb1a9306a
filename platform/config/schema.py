"""NeMo-style prompt-learning configs: YAML + dotted overrides -> one typed, fully checked config.

The spec's configs and NeMo's megatron_gpt_prompt_learning_config.yaml work as written (`trainer`,
`exp_manager`, `model`, `${name}` interpolation, even `trainer: ...`). Every key is honoured, or listed in
nemo_keys.IGNORED_KEYS (no meaning here: removed and logged; an error for values that ask for what this
engine does not do), or an error with a did-you-mean. Every problem (ranges, cross-key rules and, with
check_files, missing local data files) is reported at once, naming the dotted key, the value and the fix;
`load_config` reads them with the one config loader (loader.py) that infer, the job config and the SDK share.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import ConfigDict, Field, field_validator

from promptray.platform.config.checks import (  # noqa: F401  (normalize_precision: re-exported)
    config_problems,
    normalize_precision,
    precision_warning,
)
from promptray.platform.config.loader import read_config, validate_config
from promptray.platform.config.nemo_keys import ignored_keys_in, strip_ignored
from promptray.platform.config.overrides import Overrides
from promptray.platform.config.run import (  # noqa: F401
    CheckpointParams,
    ExpManagerConfig,
    OptimConfig,
    SchedConfig,
    Section,
    TrainerConfig,
)
from promptray.platform.config.types import MAX_COUNT, Float, Int
from promptray.platform.data.data_files import data_file_problems
from promptray.platform.data.templates import TaskTemplate, validate_task_templates

log = logging.getLogger(__name__)

class PromptTuningConfig(Section):
    """`model.prompt_tuning`: per new task (in model.new_tasks order) the init method of its prompt (text,
    random, vocab) and, for 'text', the init text (NeMo's keys)."""

    new_prompt_init_methods: list[Literal["text", "random", "vocab"]] = Field(default_factory=list)
    new_prompt_init_text: list[Optional[str]] = Field(default_factory=list)


class PTuningConfig(Section):
    """`model.p_tuning`: the prompt encoder (NeMo's lstm or mlp), its layers, dropout in [0, 1) and hidden
    size (default: the base model's hidden size)."""

    encoder_type: Literal["lstm", "mlp"] = "lstm"
    num_layers: Int = Field(2, ge=1, le=1000)
    dropout: Float = Field(0.0, ge=0.0, lt=1.0)
    encoder_hidden: Optional[Int] = Field(None, ge=2, le=MAX_COUNT)


class DataConfig(Section):
    """`model.data`: training / validation files (.json / .jsonl, local or s3://), add_eos / add_bos, shuffling,
    length grouping, and max_seq_length (tokens per example; default model.encoder_seq_length)."""

    model_config = ConfigDict(extra="forbid")
    train_ds: list[Union[str, dict]] = Field(default_factory=list)
    validation_ds: Optional[list[Union[str, dict]]] = None
    add_eos: bool = True
    add_bos: bool = False
    shuffle: bool = True
    group_by_length: bool = True
    max_seq_length: Optional[Int] = Field(None, ge=8, le=MAX_COUNT)


class ModelConfig(Section):
    """NeMo's `model` section: the base model, the prompt table (nemo_path or prompt_table), new and existing
    tasks with their templates, batch sizes (examples), data, optimizer and the prompt-tuning / p-tuning
    settings, plus this engine's lm_finetune and sharding."""

    seed: Int = Field(1234, ge=0, le=2**32 - 1)
    nemo_path: Optional[str] = None
    prompt_table: Optional[str] = None
    virtual_prompt_style: Literal["prompt-tuning", "p-tuning", "inference"] = "prompt-tuning"
    encoder_seq_length: Int = Field(2048, ge=8, le=MAX_COUNT)
    global_batch_size: Optional[Int] = Field(None, ge=1, le=MAX_COUNT)
    micro_batch_size: Int = Field(4, ge=1, le=MAX_COUNT)
    batch_size: Optional[Int] = Field(None, ge=1, le=MAX_COUNT)
    restore_path: Optional[str] = None
    language_model_path: Optional[str] = None
    existing_tasks: list[str] = Field(default_factory=list)
    new_tasks: list[str] = Field(default_factory=list)
    task_templates: list[dict[str, Any]] = Field(default_factory=list)
    prompt_tuning: PromptTuningConfig = Field(default_factory=PromptTuningConfig)
    p_tuning: PTuningConfig = Field(default_factory=PTuningConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    lm_finetune: bool = False
    sharding: Literal["none", "fsdp"] = "none"  # fsdp: shard the frozen base model across Ray workers

    @field_validator("virtual_prompt_style", mode="before")
    @classmethod
    def _style(cls, v: Any) -> Any:
        return v.replace("_", "-") if isinstance(v, str) else v


class StorageConfig(Section):
    """Where s3:// URIs (prompt tables, data files) go; credentials always come from the AWS chain."""

    endpoint_url: Optional[str] = None  # an S3-compatible server; default: AWS_ENDPOINT_URL, else AWS


class PromptLearningConfig(Section):
    """One prompt-learning run's config, in NeMo's layout (megatron_gpt_prompt_learning_config.yaml): `name`,
    `trainer`, `exp_manager`, `model` (tasks, templates, data, optimizer, prompt-tuning / p-tuning settings),
    plus this engine's `storage`. Unknown keys are errors (every `Section` forbids them).

    Build it with `load_config` (YAML or a dict, dotted overrides, cross-key checks), which raises one
    ConfigError listing every problem with its dotted key, value and fix; constructing it directly runs the
    per-key checks only (pydantic's ValidationError). The properties derive the values the engine uses:
    table_uri, precision, global_batch_size and accumulation (NeMo's rule), max_seq_length, run_dir.
    A job config (promptray.jobs.config.JobConfig) extends it with the sections of Ray Train and Tune; the
    hooks it overrides are `world_size`, `problems`, `fixed_count_tasks`, `candidate_counts` and
    `generation_budget`.
    """

    name: str = "prompt_learning"
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    exp_manager: ExpManagerConfig = Field(default_factory=ExpManagerConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    model: ModelConfig

    # ------------------------------------------------------------------ derived values
    @property
    def templates(self) -> list[TaskTemplate]:
        """The task templates, checked (ConfigError listing every template problem)."""
        return validate_task_templates(self.model.task_templates)

    @property
    def table_uri(self) -> Optional[str]:
        """Where the prompt table is: model.prompt_table, else model.nemo_path (None when neither is set)."""
        return self.model.prompt_table or self.model.nemo_path

    @property
    def precision(self) -> str:
        """trainer.precision as 'bf16' or 'fp32' (Lightning's fp16 names run as bf16); ValueError if unknown."""
        return normalize_precision(self.trainer.precision)

    @property
    def nemo_parallel_size(self) -> int:
        """NeMo's data-parallel size: trainer.devices x trainer.num_nodes ("auto" and -1 count as 1)."""
        devices = self.trainer.devices if isinstance(self.trainer.devices, int) else 1
        return max(1, devices) * max(1, self.trainer.num_nodes)

    @property
    def world_size(self) -> int:
        """Number of data-parallel workers: trainer.devices x num_nodes (a job config may set it otherwise)."""
        return self.nemo_parallel_size

    def problems(self) -> list[str]:
        """Every problem across keys (checks.config_problems); a job config adds those of its sections."""
        return config_problems(self)

    def fixed_count_tasks(self) -> list[str]:
        """New tasks trained with their template's total_virtual_tokens (a search replaces some by candidates)."""
        return list(self.model.new_tasks)

    def candidate_counts(self) -> dict[str, tuple[str, list[int]]]:
        """Virtual-token counts that may be trained instead of a template's own: taskname -> (the dotted key
        that gives them, the counts), checked against max_seq_length and the base model; none in the
        engine's config."""
        return {}

    def generation_budget(self) -> Optional[tuple[str, int]]:
        """(dotted key, tokens) generated after each validation prompt, which must fit the model's positions
        too (a search's val_accuracy objective); None in the engine's config."""
        return None

    def accumulation_for(self, world_size: int) -> int:
        """Micro-batches per optimizer step on each of `world_size` workers (NeMo's rule)."""
        return max(1, self.global_batch_size // (self.model.micro_batch_size * world_size))

    @property
    def global_batch_size(self) -> int:
        """Examples per optimizer step over all workers: model.global_batch_size, else model.batch_size, else
        micro_batch_size x trainer.accumulate_grad_batches (NeMo's rule)."""
        m = self.model
        return m.global_batch_size or m.batch_size or m.micro_batch_size * self.trainer.accumulate_grad_batches

    @property
    def accumulation(self) -> int:
        """Micro-batches per optimizer step on each of `world_size` workers (NeMo's rule)."""
        return self.global_batch_size // (self.model.micro_batch_size * self.world_size)

    @property
    def max_seq_length(self) -> int:
        """Tokens per example at most: model.data.max_seq_length, else model.encoder_seq_length."""
        return self.model.data.max_seq_length or self.model.encoder_seq_length

    @property
    def run_dir(self) -> Path:
        """The run's folder: exp_manager.explicit_log_dir, else exp_dir (default runs) / exp_manager.name (default
        the config's name)."""
        em = self.exp_manager
        if em.explicit_log_dir:
            return Path(em.explicit_log_dir)
        return Path(em.exp_dir or "runs") / (em.name or self.name)


# ----------------------------------------------------------------------------- loading

# top-level sections of a job config (promptray.jobs.config.JobConfig) that the engine's own schema does not read
JOB_SECTIONS = ("ray", "search")


def load_config(source: Union[str, Path, dict], overrides: Overrides = None, *, check_files: bool = False,
                schema: type[PromptLearningConfig] = PromptLearningConfig) -> PromptLearningConfig:
    """Read YAML (or a dict), apply dotted overrides (["model.new_tasks=[squad]"] or {key: value}; rules in
    overrides.py), resolve `${...}`, check everything (the one loader: loader.py); a precision Lightning reads
    as fp16 is logged as run in bf16.

    `schema`: the config class (a subclass of PromptLearningConfig, e.g. the job config, adds sections and
    their checks through its `problems` hook). Every problem (overrides that cannot be applied, per key, across
    keys and, with `check_files`, local data files that do not exist) is raised at once in one ConfigError
    naming key, value and fix; a `ray:` or `search:` section given to a schema without it is one of them.
    NeMo keys without meaning here (nemo_keys.IGNORED_KEYS) are removed and logged."""
    raw, problems = read_config(source, overrides)
    problems += _strip_nemo_keys(raw)
    problems += _job_section_problems(raw, schema)
    problems += data_file_problems(raw) if check_files else []
    cfg = validate_config(raw, schema, problems, cross=lambda c: c.problems(), extra_keys=ignored_keys_in)
    warning = precision_warning("trainer.precision", cfg.trainer.precision)
    if warning:
        log.warning(warning)
    return cfg


def _job_section_problems(raw: dict, schema: type[PromptLearningConfig]) -> list[str]:
    """A job section (JOB_SECTIONS) given to the engine's own schema: removed from `raw`, one problem each."""
    problems = []
    for key in JOB_SECTIONS:
        if key in raw and key not in schema.model_fields:
            raw.pop(key)
            problems.append(f"{key}: a section of the Ray job config, which the engine's loader does not read; run "
                            "this config with `promptray train`, `python -m promptray.jobs.train` or "
                            "`python -m promptray.jobs.search` (they load the job config: "
                            "promptray.jobs.config.load_job_config), or remove the section")
    return problems


def _strip_nemo_keys(raw: dict) -> list[str]:
    """Remove NeMo keys that have no meaning here (logging them); problems of values they cannot take."""
    if not isinstance(raw.get("model"), dict):
        return ["model: missing section; a config needs model.language_model_path, model.task_templates, ..."]
    removed, problems = strip_ignored(raw)
    if removed:
        log.info("ignoring NeMo keys that have no meaning here (see README, Training): %s", ", ".join(removed))
    return problems

"""NeMo-style prompt-learning configs: YAML + dotted overrides -> one typed, fully checked config.

The spec's configs and NeMo's megatron_gpt_prompt_learning_config.yaml work as written (`trainer`,
`exp_manager`, `model`, `${name}` interpolation, even `trainer: ...`). Every key is honoured, or listed in
nemo_keys.IGNORED_KEYS (no meaning here: removed and logged; an error for values that ask for what this
engine does not do), or an error with a did-you-mean. Every problem (ranges, cross-key rules and, with
check_files, missing local data files) is reported at once, naming the dotted key, the value and the fix.
"""

from __future__ import annotations

import copy
import difflib
import logging
import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from promptray.platform.config.checks import (  # noqa: F401  (normalize_precision: re-exported)
    config_problems,
    normalize_precision,
    precision_warning,
)
from promptray.platform.config.nemo_keys import ignored_keys_in, strip_ignored
from promptray.platform.config.overrides import Overrides, apply_overrides
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
from promptray.platform.errors import ConfigError

log = logging.getLogger(__name__)

class PromptTuningConfig(Section):
    new_prompt_init_methods: list[Literal["text", "random", "vocab"]] = Field(default_factory=list)
    new_prompt_init_text: list[Optional[str]] = Field(default_factory=list)


class PTuningConfig(Section):
    encoder_type: Literal["lstm", "mlp"] = "lstm"
    num_layers: Int = Field(2, ge=1, le=1000)
    dropout: Float = Field(0.0, ge=0.0, lt=1.0)
    encoder_hidden: Optional[Int] = Field(None, ge=2, le=MAX_COUNT)


class DataConfig(Section):
    model_config = ConfigDict(extra="forbid")
    train_ds: list[Union[str, dict]] = Field(default_factory=list)
    validation_ds: Optional[list[Union[str, dict]]] = None
    add_eos: bool = True
    add_bos: bool = False
    shuffle: bool = True
    group_by_length: bool = True
    max_seq_length: Optional[Int] = Field(None, ge=8, le=MAX_COUNT)


class ModelConfig(Section):
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
    hooks it overrides are `world_size`, `problems`, `fixed_count_tasks`, `candidate_counts`,
    `generation_budget` and `sections`.
    """

    name: str = "prompt_learning"
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    exp_manager: ExpManagerConfig = Field(default_factory=ExpManagerConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    model: ModelConfig

    # ------------------------------------------------------------------ derived values
    @property
    def templates(self) -> list[TaskTemplate]:
        return validate_task_templates(self.model.task_templates)

    @property
    def table_uri(self) -> Optional[str]:
        return self.model.prompt_table or self.model.nemo_path

    @property
    def precision(self) -> str:
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

    @classmethod
    def sections(cls) -> dict[str, type[BaseModel]]:
        """Each section's dotted key -> its model (the did-you-mean of unknown keys reads their fields)."""
        return {"": cls, "trainer": TrainerConfig, "exp_manager": ExpManagerConfig,
                "exp_manager.checkpoint_callback_params": CheckpointParams, "model": ModelConfig,
                "model.data": DataConfig, "model.optim": OptimConfig, "model.optim.sched": SchedConfig,
                "model.p_tuning": PTuningConfig, "model.prompt_tuning": PromptTuningConfig, "storage": StorageConfig}

    def accumulation_for(self, world: int) -> int:
        """Micro-batches per optimizer step on each of `world` workers (NeMo's rule)."""
        return max(1, self.global_batch_size // (self.model.micro_batch_size * world))

    @property
    def global_batch_size(self) -> int:
        m = self.model
        return m.global_batch_size or m.batch_size or m.micro_batch_size * self.trainer.accumulate_grad_batches

    @property
    def accumulation(self) -> int:
        return self.global_batch_size // (self.model.micro_batch_size * self.world_size)

    @property
    def max_seq_length(self) -> int:
        return self.model.data.max_seq_length or self.model.encoder_seq_length

    @property
    def run_dir(self) -> Path:
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
    overrides.py), check everything; a precision Lightning reads as fp16 is logged as run in bf16.

    `schema`: the config class (a subclass of PromptLearningConfig, e.g. the job config, adds sections and
    their checks through its `problems` and `sections` hooks). Every problem (overrides that cannot be applied,
    per key, across keys and, with `check_files`, local data files that do not exist) is raised at once in one
    ConfigError naming key, value and fix; a `ray:` or `search:` section given to a schema without it is one
    of them. NeMo keys without meaning here (nemo_keys.IGNORED_KEYS) are removed and logged."""
    raw, problems = _merge(source, overrides)
    raw = _drop_ellipsis(raw)
    problems += _strip_nemo_keys(raw)
    problems += _job_section_problems(raw, schema)
    problems += data_file_problems(raw) if check_files else []
    cfg, invalid = None, set()
    try:
        cfg = schema.model_validate(raw)
    except ValidationError as e:
        problems += _describe_all(e.errors(), schema)
        cfg, invalid = _validate_without(raw, e.errors(), schema)
    if cfg is not None:  # cross-key checks, less those that read an invalid key (they would repeat it)
        problems += [p for p in cfg.problems()
                     if not any(re.search(rf"\b{re.escape(k)}\b", p) for k in invalid)]
    if problems or cfg is None:
        raise ConfigError(problems)
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


def _merge(source: Union[str, Path, dict], overrides: Overrides) -> tuple[dict, list[str]]:
    """The config with its overrides applied, and the problems of overrides that could not be applied."""
    try:
        if isinstance(source, dict):
            conf = OmegaConf.create(source)
        else:
            if not Path(source).is_file():
                raise ConfigError(f"config file {str(source)!r} does not exist")
            conf = OmegaConf.load(source)
        problems = apply_overrides(conf, overrides)
        return OmegaConf.to_container(conf, resolve=True), problems
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot read config {source if not isinstance(source, dict) else '(dict)'}: "
                          f"{str(e).splitlines()[0]}") from None


def _validate_without(raw: dict, errors: list, schema: type[PromptLearningConfig]
                      ) -> tuple[Optional[PromptLearningConfig], set[str]]:
    """Validate `raw` with every key that has an error removed (defaults stand in for them), so the cross-key
    checks can still run. Returns (config or None, how problems name the removed keys whose values were invalid)."""
    raw, paths, invalid = copy.deepcopy(raw), [], set()
    for err in errors:
        path, node = [], raw
        for part in err.get("loc", ()):
            if not isinstance(node, dict):
                break
            if part not in node:
                path = []
                break
            path.append(part)
            node = node[part]
        if path:
            paths.append(path)
            if err.get("type") != "extra_forbidden":  # a distinctive key name, else its dotted path
                invalid.add(path[-1] if "_" in path[-1] else ".".join(path))
    for path in paths:
        parent = raw
        for part in path[:-1]:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if isinstance(parent, dict):
            parent.pop(path[-1], None)
    try:
        return schema.model_validate(raw), invalid
    except ValidationError:
        return None, invalid


def _drop_ellipsis(raw: Any) -> Any:
    """`trainer: ...` in the spec's examples means "the defaults"."""
    if isinstance(raw, dict):
        return {k: _drop_ellipsis(v) for k, v in raw.items() if not (v == "..." and k != "prompt_template")}
    return raw


def _strip_nemo_keys(raw: dict) -> list[str]:
    """Remove NeMo keys that have no meaning here (logging them); problems of values they cannot take."""
    if not isinstance(raw.get("model"), dict):
        return ["model: missing section; a config needs model.language_model_path, model.task_templates, ..."]
    removed, problems = strip_ignored(raw)
    if removed:
        log.info("ignoring NeMo keys that have no meaning here (see README, Training): %s", ", ".join(removed))
    return problems


_BOUNDS = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="), "less_than": ("lt", "<"),
           "less_than_equal": ("le", "<=")}


_UNION_TAG = re.compile(r"^(int|float|str|bool|list|dict|none)$|\[")  # loc parts pydantic adds for a Union


def _describe_all(errors: list, schema: type[PromptLearningConfig]) -> list[str]:
    """Pydantic's errors, one per key: a value that fits no member of a Union (e.g. int or float) is one
    problem under the key's own name."""
    by_key: dict[tuple, list[dict]] = {}
    for err in errors:
        loc = tuple(p for i, p in enumerate(err.get("loc", ())) if i == 0 or not _UNION_TAG.search(str(p)))
        by_key.setdefault(loc, []).append({**err, "loc": loc})
    return [_describe(errs[0], schema) if len(errs) == 1 else _describe_union(errs, schema)
            for errs in by_key.values()]


def _describe_union(errs: list[dict], schema: type[PromptLearningConfig]) -> str:
    """A value that fits none of a Union's members (their constraint errors say more, when there are some)."""
    bounded = [e for e in errs if e.get("type") in _BOUNDS or e.get("type") == "value_error"]
    if bounded:
        return _describe(bounded[0], schema)
    value = repr(errs[0].get("input"))
    kinds = " or ".join(dict.fromkeys(e["type"].removesuffix("_type").removesuffix("_parsing") for e in errs))
    return f"{'.'.join(map(str, errs[0]['loc']))}: got {value[:80]}; give a value of type {kinds}"


def _describe(err: dict, schema: type[PromptLearningConfig]) -> str:
    """One pydantic error as 'dotted.key: problem (got value); fix'."""
    loc = ".".join(str(x) for x in err.get("loc", ()))
    if err.get("type") == "extra_forbidden":
        section, key = loc.rsplit(".", 1) if "." in loc else ("", loc)
        return f"{loc}: unknown key{_suggest(key, section, schema)}; remove it or check the spelling"
    value = repr(err.get("input"))
    value = value if len(value) <= 80 else value[:80] + "..."
    if err.get("type") in _BOUNDS:
        name, op = _BOUNDS[err["type"]]
        return f"{loc}: got {value}; use a value {op} {err.get('ctx', {}).get(name)}"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{loc}: {msg} (got {value})"


def _suggest(key: str, section: str, schema: type[PromptLearningConfig]) -> str:
    model = schema.sections().get(section)
    known = (list(model.model_fields) if model else []) + ignored_keys_in(section)
    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""

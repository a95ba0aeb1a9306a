"""The tuning job's configuration, built and fully checked on the client before anything is submitted.

Either a NeMo-style config (YAML path or dict, as `promptray train` takes) or the keyword arguments of the
common case (`TuningRequest`), then the table, then `overrides` (a {dotted.key: value} dict or a list of
"dotted.key=value" strings). It is read by the engine's one config loader (promptray.platform.config.loader:
file or dict, overrides, `${...}`) and checked with `promptray.jobs.config.load_job_config` (that loader with the
job's `ray:` section); every problem (of the keyword arguments and of the config) is reported at once in a
JobConfigError.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from promptray.jobs.config import JobConfig, load_job_config
from promptray.jobs.search_config import NO_SEARCH
from promptray.platform.config.loader import describe_error, open_config, resolve_config, unique_problems
from promptray.platform.config.overrides import Overrides
from promptray.platform.config.types import MAX_COUNT, MAX_LR, MAX_STEPS, Float, Int
from promptray.platform.data.templates import TaskTemplate
from promptray.platform.errors import ConfigError
from promptray.sdk.errors import JobConfigError

if TYPE_CHECKING:
    from omegaconf import DictConfig

DEFAULT_LR = {"prompt-tuning": 3e-2, "p-tuning": 3e-3}  # the demo's learning rates


class TuningRequest(BaseModel):
    """Keyword arguments of `Client.submit_tuning` for the common case (instead of a config file)."""

    model_config = ConfigDict(extra="forbid")
    base_model: str = Field(min_length=1)  # HF folder or id, or the built-in "smollm2-135m"
    tasks: list[TaskTemplate] = Field(min_length=1)
    train_files: list[str] = Field(min_length=1)
    validation_files: list[str] = Field(default_factory=list)
    style: Literal["prompt-tuning", "p-tuning"] = "prompt-tuning"
    name: str = Field("tuning", min_length=1)
    num_workers: Int = Field(1, ge=1, le=MAX_COUNT)
    use_gpu: bool = False
    resources_per_worker: Optional[dict[str, Float]] = None  # e.g. {"CPU": 2}; None: its share of the free CPUs
    max_failures: Int = Field(0, ge=-1, le=MAX_COUNT)  # worker-group restarts from the last checkpoint
    max_steps: Int = Field(100, ge=1, le=MAX_STEPS)
    micro_batch_size: Int = Field(4, ge=1, le=MAX_COUNT)
    global_batch_size: Optional[Int] = Field(None, ge=1, le=MAX_COUNT)  # default: micro_batch_size x num_workers
    lr: Optional[Float] = Field(None, gt=0.0, le=MAX_LR)  # default: 3e-2 (prompt-tuning) or 3e-3 (p-tuning)
    precision: Union[int, str] = "bf16"
    seed: Int = Field(1234, ge=0, le=2**32 - 1)
    val_check_interval: Optional[Int] = Field(None, ge=1, le=MAX_STEPS)  # default: once, after the last step
    max_seq_length: Optional[Int] = Field(None, ge=8, le=MAX_COUNT)

    @field_validator("style", mode="before")
    @classmethod
    def _style(cls, v: Any) -> Any:
        return v.replace("_", "-") if isinstance(v, str) else v

    def to_config(self) -> dict[str, Any]:
        """The NeMo-style config dict these arguments stand for."""
        log_every = min(10, max(1, self.max_steps // 20))
        trainer = {"accelerator": "gpu" if self.use_gpu else "cpu", "precision": self.precision,
                   "max_steps": self.max_steps, "log_every_n_steps": log_every,
                   "val_check_interval": self.val_check_interval or self.max_steps}
        data = {"train_ds": list(self.train_files), "validation_ds": list(self.validation_files) or None}
        if self.max_seq_length:
            data["max_seq_length"] = self.max_seq_length
        model = {"seed": self.seed, "virtual_prompt_style": self.style, "micro_batch_size": self.micro_batch_size,
                 "global_batch_size": self.global_batch_size or self.micro_batch_size * self.num_workers,
                 "language_model_path": self.base_model, "new_tasks": [_task(t).get("taskname") for t in self.tasks],
                 "task_templates": [_task(t) for t in self.tasks], "data": data,
                 "optim": {"name": "adamw", "lr": self.lr or DEFAULT_LR[self.style]}}
        ray = {"num_workers": self.num_workers, "use_gpu": self.use_gpu, "max_failures": self.max_failures,
               "resources_per_worker": self.resources_per_worker}
        return {"name": self.name, "trainer": trainer, "model": model, "ray": ray}


def describe_request_error(err: dict) -> str:
    """One pydantic error of TuningRequest as 'argument: problem (got value); fix' (values: the config
    loader's wording, promptray.platform.config.loader.describe_error)."""
    loc = ".".join(str(x) for x in err.get("loc", ()))
    if err.get("type") == "extra_forbidden":
        close = difflib.get_close_matches(str(loc), list(TuningRequest.model_fields), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return (f"{loc}: unknown keyword argument; {hint}the keyword arguments are "
                f"{', '.join(TuningRequest.model_fields)} (anything else goes in overrides=)")
    if err.get("type") == "missing":
        return f"{loc}: required keyword argument is missing; pass {loc}=..."
    return describe_error(err)


# keyword arguments without a default, and the config keys they set (a missing / invalid one stands in empty)
REQUIRED_KEYS = {"base_model": "language_model_path", "tasks": "new_tasks", "train_files": "train_ds"}


def _task(t: Any) -> dict:
    return t.model_dump() if isinstance(t, TaskTemplate) else dict(t) if isinstance(t, Mapping) else {}


def request_config(fields: dict[str, Any]) -> tuple[dict, list[str], list[str]]:
    """(config dict, problems of the keyword arguments, config keys whose stand-ins are not the user's).

    Invalid arguments are reported and replaced by their defaults (required ones by empty values), so the
    config they stand for can still be checked: every problem comes out in one report."""
    try:
        return TuningRequest.model_validate(fields).to_config(), [], []
    except ValidationError as e:
        problems = [describe_request_error(err) for err in e.errors()]
        bad = {str(err["loc"][0]) for err in e.errors() if err.get("loc")}
    kept = {k: v for k, v in fields.items() if k in TuningRequest.model_fields and k not in bad}
    stand_ins = {k: None if k == "base_model" else [] for k in REQUIRED_KEYS if k not in kept}
    request = TuningRequest.model_construct(**stand_ins, **kept)
    return request.to_config(), problems, [REQUIRED_KEYS[k] for k in stand_ins]


def _base(config: Union[str, Path, dict, None], fields: dict[str, Any]) -> tuple[Union[str, Path, dict, None],
                                                                                   list[str], list[str]]:
    """The base config's source (a path or dict, read by the one config loader), the problems found so far,
    and config keys whose problems are already reported; a None source when there is nothing to read."""
    if config is not None and fields:
        return None, [f"config: given together with keyword arguments {sorted(fields)}; pass either config= "
                      "(a YAML path or dict) or the keyword arguments, and put changes in overrides="], []
    if config is None:
        if not fields:
            return None, ["config: missing; pass config= (a YAML path or dict) or the keyword arguments "
                          "base_model=, tasks=, train_files=, ..."], []
        return request_config(fields)
    return config, [], []


def set_table(conf: DictConfig, table: str) -> None:
    """Point the config at `table`: whichever of model.prompt_table / model.nemo_path it uses (nemo_path if
    neither), and model.restore_path too when it named the old table (continual learning in one table)."""
    model = conf.setdefault("model", {})
    old = model.get("prompt_table") or model.get("nemo_path")
    keys = [k for k in ("prompt_table", "nemo_path") if model.get(k)] or ["nemo_path"]
    for key in keys:
        model[key] = table
    if old and model.get("restore_path") == old:
        model["restore_path"] = table


def build_config(config: Union[str, Path, dict, None], overrides: Overrides, fields: dict[str, Any],
                 table: Optional[str], *, search: bool = False) -> tuple[dict[str, Any], JobConfig]:
    """The job's resolved config dict and its checked form, read by the engine's one config loader
    (promptray.platform.config.loader; the table is set before the overrides, which come before `${...}`).
    Raises JobConfigError listing every problem (keyword arguments, overrides, the config's keys and cross-key
    rules, local data files; with `search`, a missing `search:` section) at once, titled "invalid search job"
    for a search."""
    job = "search job" if search else "tuning job"
    source, problems, reported = _base(config, fields)
    if source is None:
        raise JobConfigError(problems, job=job)
    read_problems: list[str] = []
    try:
        conf = open_config(source)
        if table:
            set_table(conf, table)
        raw, read_problems = resolve_config(conf, overrides)
        if search and not raw.get("search"):
            problems.append(NO_SEARCH)
        cfg = load_job_config(raw, check_files=True)
    except ConfigError as e:
        found = [p for p in e.problems if not any(k in p for k in reported)]
        raise JobConfigError(unique_problems(problems + read_problems + found), job=job) from None
    if problems or read_problems:
        raise JobConfigError(unique_problems(problems + read_problems), job=job)
    return raw, cfg

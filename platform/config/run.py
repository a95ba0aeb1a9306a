"""The run sections of a NeMo prompt-learning config: `trainer` (Lightning's keys that apply here),
`exp_manager` (where the run's files go) and `model.optim` (AdamW and its schedule), each value with its
range. NeMo's other keys of these sections are in nemo_keys.IGNORED_KEYS; any other key is an error."""

from __future__ import annotations

from typing import Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from promptray.platform.config.types import MAX_COUNT, MAX_LR, MAX_STEPS, Float, Int, StrictInt

NONNEG_OR_UNSET = "-1 (unset, as NeMo writes it) or a number >= 1"


ACCELERATORS = ("auto", "cpu", "gpu", "cuda")


def accelerator_problem(value: object, field: str = "trainer.accelerator") -> Optional[str]:
    """A message naming the field, the value and the fix when `value` is not an accepted accelerator."""
    if isinstance(value, str) and value.lower() in ACCELERATORS:
        return None
    return (f"{field}: got {value!r}; use one of {', '.join(ACCELERATORS)} (promptray runs on the CPU or one "
            "CUDA GPU per process; Ray Train jobs take GPUs with ray.use_gpu)")


class Section(BaseModel):
    """A config section whose unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


def _count_or_unset(v: Optional[int]) -> Optional[int]:  # after Int's checks
    """NeMo writes -1 for "no limit": read as unset. Other values below 1 are errors."""
    if v is None or v == -1:
        return None
    if v < 1:
        raise ValueError(f"use {NONNEG_OR_UNSET}")
    return v


def _fraction_or_count(v: Union[int, float]) -> Union[int, float]:
    """Lightning's rule: an int is a number (>= 1), a float a fraction in (0, 1]."""
    if isinstance(v, float) and not 0 < v <= 1:
        raise ValueError("a float is a fraction of the epoch / of the batches in (0, 1]; an int is a count >= 1")
    if isinstance(v, int) and v < 1:
        raise ValueError("an int is a count >= 1; a float is a fraction in (0, 1]")
    return v


class TrainerConfig(Section):
    """PyTorch Lightning's trainer keys that apply here (NeMo's others: nemo_keys.IGNORED_KEYS)."""

    accelerator: str = "auto"  # one of ACCELERATORS (model/devices.py maps it to a device); one process, one device
    devices: Union[StrictInt, str] = 1  # >= 1, or -1 / "auto" (read as 1)
    num_nodes: Int = Field(1, ge=1, le=MAX_COUNT)
    precision: Union[int, str] = "bf16"
    max_epochs: Optional[Int] = Field(3, le=MAX_STEPS)  # as in NeMo's prompt-learning config; -1: unset
    max_steps: Optional[Int] = Field(None, le=MAX_STEPS)  # -1 (NeMo's default): unset
    val_check_interval: Union[StrictInt, Float] = 1.0
    limit_val_batches: Union[StrictInt, Float] = 1.0
    log_every_n_steps: Int = Field(10, ge=1, le=MAX_STEPS)
    accumulate_grad_batches: Int = Field(1, ge=1, le=MAX_COUNT)
    gradient_clip_val: Optional[Float] = Field(1.0, ge=0.0)  # 0 or null: no clipping (Lightning's rule)

    @field_validator("max_epochs", "max_steps")
    @classmethod
    def _unset(cls, v: Optional[int]) -> Optional[int]:
        return _count_or_unset(v)

    @field_validator("val_check_interval", "limit_val_batches")
    @classmethod
    def _fraction(cls, v: Union[int, float]) -> Union[int, float]:
        return _fraction_or_count(v)

    @field_validator("devices")
    @classmethod
    def _devices(cls, v: Union[int, str]) -> Union[int, str]:
        if (isinstance(v, int) and (1 <= v <= MAX_COUNT or v == -1)) or str(v).lower() == "auto":
            return v
        raise ValueError("use a number of devices >= 1, or -1 / 'auto'")


class CheckpointParams(Section):
    """exp_manager.checkpoint_callback_params: every NeMo key of it is in nemo_keys.IGNORED_KEYS."""


class ExpManagerConfig(Section):
    """NeMo's `exp_manager` keys that apply here: where a run's files go (`run_dir`: explicit_log_dir, else
    exp_dir/name, default runs/<name>). NeMo's others: nemo_keys.IGNORED_KEYS."""

    exp_dir: Optional[str] = None
    explicit_log_dir: Optional[str] = None
    name: Optional[str] = None
    checkpoint_callback_params: Optional[CheckpointParams] = None


SCHEDULES = {"cosineannealing", "constant", "none"}  # lower-cased names (train/steps.lr_lambda)


class SchedConfig(Section):
    """`model.optim.sched`: NeMo's CosineAnnealing (linear warmup over warmup_steps or warmup_ratio of the
    steps, constant_steps at lr, cosine decay to min_lr) or constant; steps are optimizer steps."""

    name: str = "CosineAnnealing"  # or constant / none
    warmup_steps: Optional[Int] = Field(None, ge=0, le=MAX_STEPS)
    warmup_ratio: Optional[Float] = Field(None, ge=0.0, le=1.0)
    min_lr: Float = Field(0.0, ge=0, le=MAX_LR)
    constant_steps: Int = Field(0, ge=0, le=MAX_STEPS)

    @field_validator("name")
    @classmethod
    def _known_schedule(cls, v: str) -> str:
        if v.lower() not in SCHEDULES:
            raise ValueError("unknown schedule; use CosineAnnealing (warmup, constant phase, cosine decay "
                             "to min_lr) or constant")
        return v



class OptimConfig(Section):
    """`model.optim`: AdamW (NeMo's adam / fused_adam names are read as AdamW), lr and weight decay, betas in
    [0, 1), eps, and its schedule."""

    name: str = "adamw"
    lr: Float = Field(1e-4, gt=0, le=MAX_LR)
    weight_decay: Float = Field(0.0, ge=0, le=MAX_LR)
    betas: list[Float] = Field(default_factory=lambda: [0.9, 0.999])
    eps: Float = Field(1e-8, gt=0, le=1)
    sched: Optional[SchedConfig] = Field(default_factory=SchedConfig)

    @field_validator("name")
    @classmethod
    def _known_optimizer(cls, v: str) -> str:
        if v.lower() not in {"adam", "adamw", "fused_adam", "distributed_fused_adam"}:
            raise ValueError(f"unknown optimizer {v!r}; use adamw (fused_adam and adam are read as adamw)")
        return v

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: list[float]) -> list[float]:
        if len(v) != 2 or not all(0 <= b < 1 for b in v):
            raise ValueError("give two numbers in [0, 1), e.g. [0.9, 0.999]")
        return v

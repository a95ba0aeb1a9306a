"""Checks of a whole prompt-learning config that involve several keys (each problem names the key, the value
and the fix), and NeMo / Lightning precision names. `schema.load_config` runs them after the per-key checks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Union

from promptray.platform.config.run import accelerator_problem
from promptray.platform.data.templates import validate_task_templates
from promptray.platform.errors import ConfigError

if TYPE_CHECKING:
    from promptray.platform.config.schema import ModelConfig, PromptLearningConfig


# An example holds its virtual tokens and at least this many text tokens (template words, answer, EOS);
# model/limits.py checks counts against the model with it.
MIN_TEXT_TOKENS = 4


FP16_NAMES = frozenset({"16", "16-mixed", "fp16", "half"})  # Lightning / NeMo fp16 names, run as bf16 here


def normalize_precision(value: Union[int, str]) -> str:
    """NeMo / Lightning precision names -> 'bf16' or 'fp32'. This engine has no fp16 path: Lightning's fp16
    names (FP16_NAMES: 16, 16-mixed, fp16, half) run as bf16 (`precision_warning` says so at load)."""
    v = str(value).lower()
    if v in FP16_NAMES | {"bf16", "bf16-mixed", "bf16-true"}:
        return "bf16"
    if v in {"32", "32-true", "fp32", "float32"}:
        return "fp32"
    raise ValueError(f"unknown precision {value!r}")


def precision_warning(key: str, value: Union[int, str, None]) -> Optional[str]:
    """The warning for a precision that Lightning reads as fp16 (run as bf16 here), else None."""
    if value is None or str(value).lower() not in FP16_NAMES:
        return None
    return (f"{key}: {value!r} is fp16 in Lightning / NeMo; this engine has no fp16 path and runs it as bf16 "
            f"(same speed class, wider range, fewer mantissa bits); set {key}=bf16 to say so")


# ----------------------------------------------------------------------------- cross-field checks

def config_problems(cfg: PromptLearningConfig) -> list[str]:
    """Problems that involve several keys. Tasks vs the restored table are checked when it is opened."""
    problems = _template_problems(cfg) + _task_list_problems(cfg) + _batch_problems(cfg)
    problems += _length_problems(cfg) + _optim_problems(cfg)
    try:
        normalize_precision(cfg.trainer.precision)
    except ValueError:
        problems.append(f"trainer.precision: got {cfg.trainer.precision!r}; use bf16, 16 (read as bf16) or 32")
    problems += [p for p in [accelerator_problem(cfg.trainer.accelerator)] if p]
    return problems


def _template_problems(cfg: PromptLearningConfig) -> list[str]:
    try:
        validate_task_templates(cfg.model.task_templates)
    except ConfigError as e:
        return e.problems
    return []


def _task_list_problems(cfg: PromptLearningConfig) -> list[str]:
    m, problems = cfg.model, []
    names = [t.get("taskname") for t in m.task_templates]
    if m.virtual_prompt_style == "inference":
        problems.append("model.virtual_prompt_style: got 'inference'; NeMo's 'inference' style only runs a trained "
                        "model, it cannot train: use prompt-tuning or p-tuning (for inference from a prompt table "
                        "run `promptray infer`)")
    if not m.new_tasks:
        problems.append("model.new_tasks: empty; name the tasks to tune (each needs a task template)")
    for t in m.new_tasks:
        if t not in names:
            problems.append(f"model.new_tasks: task {t!r} has no entry in model.task_templates "
                            f"(templates: {names}); add its template")
        if t in m.existing_tasks:
            problems.append(f"model.new_tasks: task {t!r} is also in model.existing_tasks; a task is either "
                            "new (tuned now) or existing (frozen)")
    if len(set(m.new_tasks)) != len(m.new_tasks):
        problems.append(f"model.new_tasks: {m.new_tasks} lists a task twice")
    if m.existing_tasks and not m.restore_path:
        problems.append(f"model.existing_tasks: {m.existing_tasks} given but model.restore_path is null; set "
                        "restore_path to the prompt table that holds them, or empty existing_tasks")
    if not m.language_model_path and not m.restore_path:
        problems.append("model.language_model_path: not set; give a Hugging Face model directory or id, "
                        "or the built-in name smollm2-135m")
    if not cfg.table_uri:
        problems.append("model.nemo_path: not set; name where the prompt table is saved "
                        "(model.nemo_path or model.prompt_table)")
    if m.nemo_path and m.prompt_table and m.nemo_path != m.prompt_table:
        problems.append(f"model.prompt_table ({m.prompt_table!r}) and model.nemo_path ({m.nemo_path!r}) "
                        "disagree; set only one")
    if not m.data.train_ds:
        problems.append("model.data.train_ds: empty; list .json/.jsonl training files")
    if m.virtual_prompt_style == "prompt-tuning":
        problems += _init_problems(m)
    return problems


def _init_problems(m: ModelConfig) -> list[str]:
    pt, n, problems = m.prompt_tuning, len(m.new_tasks), []
    if pt.new_prompt_init_methods and len(pt.new_prompt_init_methods) != n:
        problems.append(f"model.prompt_tuning.new_prompt_init_methods: {pt.new_prompt_init_methods} has "
                        f"{len(pt.new_prompt_init_methods)} entries for {n} new task(s) {m.new_tasks}; "
                        "give one per new task")
    for i, method in enumerate(pt.new_prompt_init_methods):
        text = pt.new_prompt_init_text[i] if i < len(pt.new_prompt_init_text) else None
        if method == "text" and not text:
            problems.append(f"model.prompt_tuning.new_prompt_init_text[{i}]: task "
                            f"{m.new_tasks[i] if i < n else i!r} uses init method 'text' but has no text; "
                            "give the init text or use 'random'")
    return problems


def _batch_problems(cfg: PromptLearningConfig) -> list[str]:
    m, t, problems = cfg.model, cfg.trainer, []
    step = m.micro_batch_size * cfg.world_size
    if cfg.global_batch_size % step:
        problems.append(f"model.global_batch_size: {cfg.global_batch_size} is not a multiple of "
                        f"micro_batch_size x data-parallel size = {m.micro_batch_size} x "
                        f"{cfg.world_size}; make it one")
    if not t.max_steps and not t.max_epochs:
        problems.append("trainer: neither max_steps nor max_epochs is set (-1 means unset); set one of them")
    return problems


def _length_problems(cfg: PromptLearningConfig) -> list[str]:
    """Virtual-token counts (templates, a job's candidates: cfg.candidate_counts) against max_seq_length; the
    base model's own position limit is checked from its config when a run starts (model/limits.py)."""
    limit, problems = cfg.max_seq_length, _seq_length_problems(cfg.model)
    key = "model.data.max_seq_length" if cfg.model.data.max_seq_length else "model.encoder_seq_length"
    counts = [(f"model.task_templates[{i}].total_virtual_tokens (task {t.get('taskname')!r})",
               [t.get("total_virtual_tokens")]) for i, t in enumerate(cfg.model.task_templates)
              if t.get("taskname") in cfg.fixed_count_tasks()]
    counts += list(cfg.candidate_counts().values())
    for where, values in counts:
        over = sorted({c for c in values if isinstance(c, int) and c + MIN_TEXT_TOKENS > limit})
        if over:
            problems.append(f"{where}: {over[0] if len(over) == 1 else over} virtual tokens do not fit {key}="
                            f"{limit}; an example needs its virtual tokens plus at least {MIN_TEXT_TOKENS} text "
                            f"tokens, so use at most {limit - MIN_TEXT_TOKENS} (or raise {key})")
    return problems


def _seq_length_problems(m: ModelConfig) -> list[str]:
    """model.data.max_seq_length caps the examples; it cannot exceed the model's model.encoder_seq_length
    when both are given (the base model's own position limit caps both: model/limits.py)."""
    cap = m.data.max_seq_length
    if cap is None or "encoder_seq_length" not in m.model_fields_set or cap <= m.encoder_seq_length:
        return []
    return [f"model.data.max_seq_length: {cap} is above model.encoder_seq_length={m.encoder_seq_length}; an "
            "example cannot be longer than the model's sequence length. Give data.max_seq_length <= "
            f"{m.encoder_seq_length} (it caps the examples), or raise encoder_seq_length, or set only one"]


def _optim_problems(cfg: PromptLearningConfig) -> list[str]:
    o, problems = cfg.model.optim, []
    if o.sched is not None and o.sched.warmup_steps is not None and o.sched.warmup_ratio is not None:
        problems.append(f"model.optim.sched: warmup_steps ({o.sched.warmup_steps}) and warmup_ratio "
                        f"({o.sched.warmup_ratio}) are both set; give only one")
    if o.sched is not None and o.sched.min_lr > o.lr:
        problems.append(f"model.optim.sched.min_lr: {o.sched.min_lr} is above model.optim.lr={o.lr}; the schedule "
                        "decays from lr to min_lr, so give min_lr <= lr")
    return problems

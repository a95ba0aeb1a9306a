"""NeMo training-config keys that have no meaning on this engine: the one list of them, and their removal.

NeMo's `megatron_gpt_prompt_learning_config.yaml` runs as written. Each of its keys is either honoured (a
field of the schema in schema.py), or listed here with why it has no meaning here, or an error. A listed key
is removed before the schema check and logged; when its value would ask for something this engine does not
do (model parallelism, a W&B logger, resuming a Lightning checkpoint, selecting prompts by another metric),
it is an error naming the key, the value and the fix. README's Training section lists the same keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

ANY = object()  # every value is fine


@dataclass(frozen=True)
class IgnoredKey:
    """A NeMo key without meaning here: why, the values that ask for nothing more (others are errors), and
    the fix to name when a value is not accepted."""

    why: str  # why the key has no meaning here
    accepted: tuple = (ANY,)  # values that ask for nothing more than what this engine does; others are errors
    fix: str = ""  # what to do instead, when a value is not accepted

    def problem(self, key: str, value: Any) -> Optional[str]:
        """None when `value` is accepted, else 'key: got value; why: fix' (values spelled as YAML spells them)."""
        if ANY in self.accepted or value in self.accepted:
            return None
        shown = " or ".join(_yaml(v) for v in self.accepted if v is not None)
        todo = f"set it to {shown} or leave it out" if shown else "leave it out or set it to null"
        return f"{key}: got {_yaml(value)}; {self.why}: {todo}{self.fix}"


def _yaml(value: Any) -> str:
    """A value as a YAML file would spell it (null, true, 'text')."""
    return {None: "null", True: "true", False: "false"}.get(value, repr(value)) if isinstance(
        value, (bool, type(None))) else repr(value)


_PARALLEL = "model parallelism is not supported (one model replica per worker)"
_LIGHTNING = "Lightning's own machinery; this engine runs its own loop"
_RESUME = "; a Ray Train job resumes from its own checkpoints after a failure (ray.max_failures)"

IGNORED_KEYS: dict[str, IgnoredKey] = {
    "trainer.logger": IgnoredKey("metrics go to metrics.jsonl and learning_curve.png in the run dir"),
    "trainer.enable_checkpointing": IgnoredKey(f"{_LIGHTNING}; a Ray job checkpoints every validation "
                                               "(ray.checkpoint_every_n_steps)"),
    "trainer.replace_sampler_ddp": IgnoredKey(f"{_LIGHTNING}; batches are split over workers by the engine"),
    "trainer.use_distributed_sampler": IgnoredKey(f"{_LIGHTNING}; batches are split over workers by the engine"),
    "trainer.benchmark": IgnoredKey("cuDNN autotuning (speed only)"),
    "trainer.enable_progress_bar": IgnoredKey("`promptray train --no-progress` turns the bar off"),
    "trainer.enable_model_summary": IgnoredKey("the log names the base model and the trainable parameters"),
    "trainer.resume_from_checkpoint": IgnoredKey("restoring a Lightning checkpoint is not supported", (None,),
                                                 _RESUME),
    "exp_manager.create_wandb_logger": IgnoredKey("Weights & Biases logging is not supported", (False, None)),
    "exp_manager.wandb_logger_kwargs": IgnoredKey("used only with create_wandb_logger"),
    "exp_manager.resume_if_exists": IgnoredKey(f"a run always starts from the config{_RESUME}"),
    "exp_manager.resume_ignore_no_checkpoint": IgnoredKey("used only with resume_if_exists"),
    "exp_manager.create_checkpoint_callback": IgnoredKey("the prompts of the lowest val_loss are always kept "
                                                         "and published"),
    "exp_manager.checkpoint_callback_params.monitor": IgnoredKey(
        "the published prompts are those of the lowest val_loss", ("val_loss", None)),
    "exp_manager.checkpoint_callback_params.mode": IgnoredKey(
        "the published prompts are those of the lowest val_loss", ("min", None)),
    "exp_manager.checkpoint_callback_params.save_top_k": IgnoredKey("only the best prompts are published"),
    "exp_manager.checkpoint_callback_params.save_nemo_on_train_end": IgnoredKey(
        "the prompt table at model.nemo_path is always written at the end"),
    "exp_manager.checkpoint_callback_params.filename": IgnoredKey("no Lightning checkpoint files are written"),
    "exp_manager.checkpoint_callback_params.model_parallel_size": IgnoredKey(_PARALLEL, (1, None)),
    "exp_manager.checkpoint_callback_params.save_best_model": IgnoredKey(
        "the prompts of the lowest val_loss are always the ones published", (True, None)),
    "exp_manager.checkpoint_callback_params.always_save_nemo": IgnoredKey(
        "the prompt table at model.nemo_path is always written at the end"),
    "model.tensor_model_parallel_size": IgnoredKey(_PARALLEL, (1, None)),
    "model.pipeline_model_parallel_size": IgnoredKey(_PARALLEL, (1, None)),
    "model.pipeline_model_parallel_split_rank": IgnoredKey("used only with pipeline parallelism"),
    "model.sequence_parallel": IgnoredKey("used only with tensor parallelism", (False, None)),
    "model.megatron_amp_O2": IgnoredKey("Megatron's mixed-precision mode; trainer.precision sets the precision"),
    "model.activations_checkpoint_granularity": IgnoredKey("activation recomputation (memory only)"),
    "model.activations_checkpoint_method": IgnoredKey("activation recomputation (memory only)"),
    "model.activations_checkpoint_num_layers": IgnoredKey("activation recomputation (memory only)"),
    "model.p_tuning.init_std": IgnoredKey("used only by NeMo's tensor-parallel 'tpmlp' encoder"),
    "model.data.num_workers": IgnoredKey("batches are built in the training process"),
    "model.data.pin_memory": IgnoredKey("batches are built in the training process"),
    "model.data.drop_last": IgnoredKey("every optimizer step takes a full global batch"),
    "model.data.min_seq_length": IgnoredKey("every example has at least its virtual tokens and answer",
                                            (0, 1, None)),
    "model.data.train_cache_data_path": IgnoredKey("tokenized data is not cached on disk", (None,)),
    "model.data.validation_cache_data_path": IgnoredKey("tokenized data is not cached on disk", (None,)),
    "model.data.test_cache_data_path": IgnoredKey("tokenized data is not cached on disk", (None,)),
    "model.data.load_cache": IgnoredKey("tokenized data is not cached on disk", (False, None)),
    "model.data.test_ds": IgnoredKey("training does not test; run `promptray infer` on the test files"),
    "model.optim.sched.monitor": IgnoredKey("used only with reduce_on_plateau", ("val_loss", None)),
    "model.optim.sched.reduce_on_plateau": IgnoredKey("the schedule follows steps, not the validation loss",
                                                      (False, None)),
}


def strip_ignored(raw: dict) -> tuple[list[str], list[str]]:
    """Remove the listed keys from `raw` (in place). Returns (the keys removed, problems of their values)."""
    removed, problems = [], []
    for dotted, rule in IGNORED_KEYS.items():
        *parents, key = dotted.split(".")
        node = raw
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and key in node:
            value = node.pop(key)
            removed.append(dotted)
            problems += [p for p in [rule.problem(dotted, value)] if p]
    params = (raw.get("exp_manager") or {}).get("checkpoint_callback_params") if isinstance(
        raw.get("exp_manager"), dict) else None
    if params == {}:  # every key of it was a listed one
        raw["exp_manager"].pop("checkpoint_callback_params")
    return removed, problems


def ignored_keys_in(section: str) -> list[str]:
    """The listed keys directly under `section` (for did-you-mean suggestions)."""
    return [k.removeprefix(section + ".") for k in IGNORED_KEYS
            if k.startswith(section + ".") and "." not in k.removeprefix(section + ".")]

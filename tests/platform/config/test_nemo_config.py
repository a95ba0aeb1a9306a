"""NeMo's training config (megatron_gpt_prompt_learning_config.yaml) as written: it loads, and every key of it
is either honoured (its value reaches the checked config) or in the one list of keys without meaning here
(nemo_keys.IGNORED_KEYS, logged, and named in README's Training section); values those keys cannot take,
and unknown keys, are errors."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from promptray.platform.config.nemo_keys import IGNORED_KEYS
from promptray.platform.config.schema import load_config
from promptray.platform.errors import ConfigError

NEMO_YAML = Path(__file__).parent / "nemo" / "megatron_gpt_prompt_learning_config.yaml"
README = Path(__file__).parents[3] / "README.md"
MODEL = ["model.language_model_path=smollm2-135m"]  # NeMo writes `???` (required)


def leaves(node: dict, prefix: str = "") -> dict[str, object]:
    """Dotted key -> value of every leaf of a mapping (lists, e.g. task_templates, are leaves)."""
    out = {}
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(leaves(value, path + "."))
        else:
            out[path] = value
    return out


@pytest.fixture
def nemo_dir(tmp_path, monkeypatch) -> Path:
    """A working dir holding the data files NeMo's config names."""
    (tmp_path / "data").mkdir()
    for name in ("squad_train.jsonl", "squad_val.jsonl"):
        (tmp_path / "data" / name).write_text('{"taskname": "squad", "context": "c", "question": "q", '
                                              '"answer": "a"}\n')
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_nemo_training_config_loads_as_written_and_every_key_has_its_documented_fate(nemo_dir, caplog):
    with caplog.at_level(logging.INFO, logger="promptray.platform.config.schema"):
        cfg = load_config(NEMO_YAML, MODEL, check_files=True)
    written = leaves(yaml.safe_load(NEMO_YAML.read_text()))
    ignored = {k for k in written if k in IGNORED_KEYS or k.startswith("exp_manager.wandb_logger_kwargs.")}
    dumped = leaves(cfg.model_dump())
    honoured = set(written) - ignored
    assert honoured <= set(dumped), sorted(honoured - set(dumped))
    assert len(honoured) == 43 and len(ignored) == 34
    # honoured values as NeMo means them
    assert (cfg.trainer.max_epochs, cfg.trainer.max_steps, cfg.precision) == (3, None, "bf16")  # -1: unset
    assert cfg.trainer.gradient_clip_val == 1.0 and cfg.trainer.val_check_interval == 1.0
    assert cfg.exp_manager.name == "megatron_virtual_prompt_gpt" and cfg.table_uri == "megatron_virtual_prompt_gpt.nemo"
    assert cfg.model.optim.betas == [0.9, 0.98] and cfg.model.optim.sched.warmup_steps == 50
    assert cfg.model.p_tuning.encoder_type == "mlp" and cfg.model.p_tuning.encoder_hidden == 2048
    assert cfg.max_seq_length == 1024
    # the ignored ones are logged, and each is named in the README's Training section
    logged = caplog.text
    training = README.read_text().split("## Training", 1)[1].split("\n## ", 1)[0]
    for key in {k for k in ignored if k in IGNORED_KEYS}:
        assert key in logged
        assert f"`{key}`" in training, key


@pytest.mark.parametrize("override, expected", [
    ("trainer.resume_from_checkpoint=ckpt/last.ckpt",
     "trainer.resume_from_checkpoint: got 'ckpt/last.ckpt'; restoring a Lightning checkpoint is not supported: "
     "leave it out or set it to null; a Ray Train job resumes from its own checkpoints after a failure "
     "(ray.max_failures)"),
    ("model.optim.sched.name=WarmupHoldPolicy",
     "model.optim.sched.name: unknown schedule; use CosineAnnealing (warmup, constant phase, cosine decay to "
     "min_lr) or constant (got 'WarmupHoldPolicy')"),
    ("exp_manager.create_wandb_logger=true",
     "exp_manager.create_wandb_logger: got true; Weights & Biases logging is not supported: set it to false or "
     "leave it out"),
    ("exp_manager.checkpoint_callback_params.monitor=val_accuracy",
     "exp_manager.checkpoint_callback_params.monitor: got 'val_accuracy'; the published prompts are those of "
     "the lowest val_loss: set it to 'val_loss' or leave it out"),
    ("model.optim.sched.reduce_on_plateau=true",
     "model.optim.sched.reduce_on_plateau: got true; the schedule follows steps, not the validation loss: set it "
     "to false or leave it out"),
    ("trainer.max_step=100", "trainer.max_step: unknown key (did you mean 'max_steps'?); remove it or check the "
     "spelling"),
    ("exp_manager.checkpoint_callback_params.save_top=3",
     "exp_manager.checkpoint_callback_params.save_top: unknown key (did you mean 'save_top_k'?); remove it or "
     "check the spelling"),
    ("model.optim.sched.warmup_step=5",
     "model.optim.sched.warmup_step: unknown key (did you mean 'warmup_steps'?); remove it or check the spelling"),
    ("trainr.max_steps=5", "trainr: unknown key (did you mean 'trainer'?); remove it or check the spelling"),
])
def test_nemo_values_this_engine_cannot_honour_and_typos_are_errors(nemo_dir, override, expected):
    with pytest.raises(ConfigError) as e:
        load_config(NEMO_YAML, MODEL + [override], check_files=True)
    assert e.value.problems == [expected]

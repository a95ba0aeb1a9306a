"""A two-task data-parallel config and an interrupted-and-resumed run, shared by the training, device and CUDA
tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from promptray.platform.config.schema import PromptLearningConfig, load_config
from promptray.platform.train.trainer import build_loop

WORDS = "apple river stone cloud green tiger music paper candle window garden silver".split()


def dp_config(tmp_path: Path, model: Path, style: str = "prompt-tuning", steps: int = 4) -> PromptLearningConfig:
    """Two tasks with different prompt lengths and answer lengths; global batch 8 = 2 x 2 workers x 2
    (trainer.devices: 2, the world size)."""
    rng = random.Random(0)
    rows = [{"taskname": t, "text": " ".join(rng.sample(WORDS, rng.randint(2, 6))),
             "label": " ".join(rng.sample(WORDS, 1 if t == "a" else 3))} for t in ("a", "b") for _ in range(20)]
    data = tmp_path / "dp.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    templates = [{"taskname": t, "prompt_template": "<|VIRTUAL_PROMPT_0|> {text} label: {label}",
                  "total_virtual_tokens": k, "virtual_token_splits": [k], "answer_only_loss": True,
                  "answer_field": "label"} for t, k in (("a", 3), ("b", 5))]
    return load_config({"name": "dp", "trainer": {"max_steps": steps, "val_check_interval": 2, "precision": 32,
                                                  "log_every_n_steps": 1, "devices": 2},
                        "exp_manager": {"exp_dir": str(tmp_path / "runs")},
                        "model": {"language_model_path": str(model), "nemo_path": str(tmp_path / "table"),
                                  "virtual_prompt_style": style, "new_tasks": ["a", "b"],
                                  "task_templates": templates, "global_batch_size": 8, "micro_batch_size": 2,
                                  "data": {"train_ds": [str(data)], "validation_ds": [str(data)]},
                                  "optim": {"lr": 0.05}}})


def full_and_resumed(cfg: PromptLearningConfig, device=None):
    """(an uninterrupted run, a run stopped after step 3 and resumed from its state in a fresh loop, that state)."""
    full = build_loop(cfg, device=device)
    full.run()
    saved = {}

    class Stop(Exception):
        pass

    def stop_after_3(info):
        if info.step == 3:
            saved["state"] = info.loop.state_dict()
            raise Stop

    cfg.exp_manager.name = "interrupted"
    with pytest.raises(Stop):
        build_loop(cfg, device=device).run(on_step=stop_after_3)
    resumed = build_loop(cfg, device=device)
    resumed.load_state_dict(saved["state"])
    assert resumed.state.step == 3 and resumed.state.position == 12  # 3 steps x 4 micro-batches of 2
    resumed.run()
    return full, resumed, saved["state"]

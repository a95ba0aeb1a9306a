"""Tiny training data and configs shared by the SDK tests (not a test module)."""

from __future__ import annotations

import json
from pathlib import Path

TEMPLATE = {"taskname": "sentiment", "prompt_template": "<|VIRTUAL_PROMPT_0|> Review: {sentence}\nSentiment: {label}",
            "total_virtual_tokens": 4, "virtual_token_splits": [4], "truncate_field": "sentence",
            "answer_only_loss": True, "answer_field": "label"}
WORDS = "apple river stone cloud green tiger music paper candle window garden silver".split()


def write_jsonl(path: Path, n: int, seed: int = 0) -> Path:
    rows = [{"taskname": "sentiment", "sentence": f"{WORDS[(i + seed) % 12]} {WORDS[(3 * i + seed) % 12]}",
             "label": "positive" if i % 2 else "negative"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tuning_config(model: Path, table: str, train: list[str], val: list[str], run_root: Path,
                  steps: int = 3) -> dict:
    """A tiny, fast, valid config (fp32, batch 4, val once at the end)."""
    return {"name": "sdk_e2e",
            "trainer": {"devices": 1, "accelerator": "cpu", "num_nodes": 1, "precision": 32, "max_steps": steps,
                        "val_check_interval": steps, "log_every_n_steps": 1},
            "exp_manager": {"exp_dir": str(run_root)},
            "model": {"seed": 1, "nemo_path": table, "virtual_prompt_style": "prompt-tuning",
                      "encoder_seq_length": 64, "global_batch_size": 4, "micro_batch_size": 4,
                      "language_model_path": str(model), "new_tasks": ["sentiment"], "task_templates": [TEMPLATE],
                      "data": {"train_ds": train, "validation_ds": val}, "optim": {"name": "adamw", "lr": 0.01}}}

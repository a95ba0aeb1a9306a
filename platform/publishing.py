"""Publishing a run's prompts to the prompt table, and the run summary files."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import torch

from promptray.platform.config import PromptLearningConfig
from promptray.platform.engine import Engine
from promptray.platform.prompt_table import PromptTable, TaskPrompt

log = logging.getLogger(__name__)


def publish_prompts(cfg: PromptLearningConfig, engine: Engine, prompts: dict[str, torch.Tensor],
                    metrics: dict) -> dict[str, str]:
    """Write the new tasks (and, for a table other than the restored one, the existing tasks) atomically."""
    fingerprint = engine.fingerprint
    if cfg.model.lm_finetune:
        fingerprint = _save_finetuned(cfg, engine)
    source = {"job": "promptray train", "config_name": cfg.name, "run_dir": str(cfg.run_dir),
              "restore_path": cfg.model.restore_path}
    style = cfg.model.virtual_prompt_style
    out = [TaskPrompt(n, prompts[n], engine.templates[n].model_dump(), style, fingerprint, metrics, source)
           for n in engine.new_tasks]
    if cfg.model.restore_path and _same_table(cfg.model.restore_path, cfg.table_uri):
        log.info("adding %s to the restored table %s", engine.new_tasks, cfg.table_uri)
    else:
        out += [TaskPrompt(p.taskname, p.embeddings, p.template, p.style, p.base_model, p.metrics, p.source,
                           p.created_at) for p in engine.existing.values()]
    return PromptTable(cfg.table_uri).publish(out)


def _same_table(a: str, b: Optional[str]) -> bool:
    """Whether two table URIs name the same table (s3:// compared as text, local paths resolved)."""
    def norm(uri: str) -> str:
        uri = str(uri)
        if uri.startswith("s3://"):
            return uri.rstrip("/")
        return str(Path(uri.removeprefix("file://")).expanduser().resolve())
    return b is not None and norm(a) == norm(b)


def _save_finetuned(cfg: PromptLearningConfig, engine: Engine):
    from promptray.platform.fingerprint import fingerprint_model

    path = cfg.run_dir / "finetuned_model"
    engine.model.lm.save_pretrained(path)
    engine.tokenizer.save_pretrained(path)
    log.info("lm_finetune: saved the fine-tuned base model to %s; its prompts are tied to it", path)
    return fingerprint_model(engine.model.lm, str(path.resolve()))


def write_summary(run_dir: Path, cfg: PromptLearningConfig, metrics: dict, versions: dict[str, str]) -> None:
    summary = {"name": cfg.name, "table": cfg.table_uri, "versions": versions, **metrics}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    (run_dir / "config.json").write_text(cfg.model_dump_json(indent=2))

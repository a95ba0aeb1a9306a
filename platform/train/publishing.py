"""Publishing a run's prompts to the prompt table, and the run summary files."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import torch

from promptray.platform.config.schema import PromptLearningConfig
from promptray.platform.data.encoding import TaskEncoding
from promptray.platform.table.table import PromptTable, TaskPrompt
from promptray.platform.train.engine import Engine

log = logging.getLogger(__name__)


def publish_prompts(cfg: PromptLearningConfig, engine: Engine, prompts: dict[str, torch.Tensor],
                    metrics: dict, run: Optional[dict] = None) -> dict[str, str]:
    """Write the new tasks (and, for a table other than the restored one, the existing tasks) atomically.

    `run` ({"id": ..., "started_at": ISO time}) names a job run that may be restarted after it published
    (a Ray Train worker group replaced between publishing and reporting): the run id goes into each
    version's source, and a run that already published returns those versions instead of a second set."""
    table = PromptTable(cfg.table_uri, endpoint_url=cfg.storage.endpoint_url)
    same_table = bool(cfg.model.restore_path) and _same_table(cfg.model.restore_path, cfg.table_uri)
    if run is not None:
        done = versions_published_by(table, engine.new_tasks, run, [] if same_table else list(engine.existing))
        if done is not None:
            log.warning("run %s already published %s; not publishing again", run["id"], done)
            return done
    fingerprint = engine.fingerprint
    if cfg.model.lm_finetune:
        fingerprint = _save_finetuned(cfg, engine)
    source = {"job": "promptray train", "config_name": cfg.name, "run_dir": str(cfg.run_dir),
              "restore_path": cfg.model.restore_path, **({"run_id": run["id"]} if run is not None else {})}
    style, d = cfg.model.virtual_prompt_style, cfg.model.data
    encoding = TaskEncoding.of(engine.tokenizer, add_bos=d.add_bos, add_eos=d.add_eos)
    out = [TaskPrompt(n, prompts[n], engine.templates[n].model_dump(), style, fingerprint, metrics, source,
                      encoding=encoding) for n in engine.new_tasks]
    if same_table:
        log.info("adding %s to the restored table %s", engine.new_tasks, cfg.table_uri)
    else:
        out += [TaskPrompt(p.taskname, p.embeddings, p.template, p.style, p.base_model, p.metrics, p.source,
                           p.created_at, encoding=p.encoding) for p in engine.existing.values()]
    return table.publish(out)


def versions_published_by(table: PromptTable, tasks: list[str], run: dict,
                          copied: list[str] = ()) -> Optional[dict[str, str]]:
    """The versions of `tasks` that the run `run["id"]` published (with the current versions of the
    `copied` existing tasks, published together with them), or None if it has not published.
    Reads only versions created since the run began."""
    if not table.exists() or not set(tasks) <= set(table.tasks(include_deleted=True)):
        return None
    found = {}
    for task in tasks:
        for info in reversed(table.history(task)):
            if info.created_at < run["started_at"]:
                return None
            if table.get(task, info.version).source.get("run_id") == run["id"]:
                found[task] = info.version
                break
        else:
            return None
    current = {info.taskname: info.version for info in table.describe()}
    return {**{t: current[t] for t in copied if t in current}, **found}


def _same_table(a: str, b: Optional[str]) -> bool:
    """Whether two table URIs name the same table (s3:// compared as text, local paths resolved)."""
    def norm(uri: str) -> str:
        uri = str(uri)
        if uri.startswith("s3://"):
            return uri.rstrip("/")
        return str(Path(uri.removeprefix("file://")).expanduser().resolve())
    return b is not None and norm(a) == norm(b)


def _save_finetuned(cfg: PromptLearningConfig, engine: Engine):
    from promptray.platform.model.fingerprint import fingerprint_model

    path = cfg.run_dir / "finetuned_model"
    engine.model.lm.save_pretrained(path)
    engine.tokenizer.save_pretrained(path)
    log.info("lm_finetune: saved the fine-tuned base model to %s; its prompts are tied to it", path)
    return fingerprint_model(engine.model.lm, str(path.resolve()))


def write_summary(run_dir: Path, cfg: PromptLearningConfig, metrics: dict, versions: dict[str, str]) -> None:
    """Write run_dir/summary.json (name, table, published versions, `metrics`) and run_dir/config.json (the
    checked config as run)."""
    summary = {"name": cfg.name, "table": cfg.table_uri, "versions": versions, **metrics}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    (run_dir / "config.json").write_text(cfg.model_dump_json(indent=2))

"""Publishing a run's prompts to the prompt table, and the run summary files."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import torch

from promptray.platform.config.schema import PromptLearningConfig
from promptray.platform.data.encoding import TaskEncoding
from promptray.platform.model.fingerprint import BaseModelFingerprint
from promptray.platform.table.table import PromptTable, TaskPrompt
from promptray.platform.train.engine import Engine

log = logging.getLogger(__name__)


def publish_prompts(cfg: PromptLearningConfig, engine: Engine, prompts: dict[str, torch.Tensor],
                    metrics: dict, run: Optional[dict] = None) -> dict[str, str]:
    """Publish a training run's new tasks (`prompts`: taskname -> (total_virtual_tokens, H)) with `publish_tasks`.

    `run` ({"id": ..., "started_at": ISO time}) names a job run that may be restarted after it published
    (a Ray Train worker group replaced between publishing and reporting): the run id goes into each
    version's source, and a run that already published returns those versions instead of a second set."""
    if run is not None:
        copied = list(engine.existing) if copies_existing(cfg) else []
        done = versions_published_by(PromptTable(cfg.table_uri, endpoint_url=cfg.storage.endpoint_url),
                                     engine.new_tasks, run, copied)
        if done is not None:
            log.warning("run %s already published %s; not publishing again", run["id"], done)
            return done
    fingerprint = _save_finetuned(cfg, engine) if cfg.model.lm_finetune else engine.fingerprint
    source = {"job": "promptray train", "config_name": cfg.name, "run_dir": str(cfg.run_dir),
              "restore_path": cfg.model.restore_path, **({"run_id": run["id"]} if run is not None else {})}
    new = task_prompts(cfg, prompts, engine.new_tasks, metrics, source, base_model=fingerprint,
                       encoding=training_encoding(cfg, engine.tokenizer))
    return publish_tasks(cfg, engine.existing, new)


def training_encoding(cfg: PromptLearningConfig, tokenizer) -> TaskEncoding:
    """How `cfg`'s examples are encoded with `tokenizer` (model.data.add_bos / add_eos, the tokenizer's
    fingerprint): recorded with every prompt the run publishes."""
    d = cfg.model.data
    return TaskEncoding.of(tokenizer, add_bos=d.add_bos, add_eos=d.add_eos)


def task_prompts(cfg: PromptLearningConfig, prompts: dict[str, torch.Tensor], tasks: list[str], metrics: dict,
                 source: dict, *, base_model: BaseModelFingerprint, encoding: TaskEncoding) -> list[TaskPrompt]:
    """The table entries of `tasks`: `prompts[name]` ((total_virtual_tokens, H)) with `cfg`'s template and
    prompt style, trained on `base_model` with `encoding` (`training_encoding`), with `metrics` and `source`
    as provenance. Needs no model: a search publishes what its trials recorded."""
    templates = {t.taskname: t for t in cfg.templates}
    return [TaskPrompt(n, prompts[n], templates[n].model_dump(), cfg.model.virtual_prompt_style, base_model,
                       metrics, source, encoding=encoding) for n in tasks]


def copies_existing(cfg: PromptLearningConfig) -> bool:
    """Whether publishing to `cfg.table_uri` copies the existing tasks too: it is not the restored table."""
    return not (cfg.model.restore_path and _same_table(cfg.model.restore_path, cfg.table_uri))


def publish_tasks(cfg: PromptLearningConfig, existing: dict[str, TaskPrompt], new: list[TaskPrompt]) -> dict[str, str]:
    """Publish `new` to `cfg.table_uri` in one atomic version, with the `existing` tasks (the run's restored
    ones, `Engine.existing`) copied as restored (their provenance kept) unless that table is the restored one.
    Returns taskname -> version of each task written; the table's errors (e.g. a conflicting concurrent
    publish) pass through."""
    if copies_existing(cfg):
        new = new + [TaskPrompt(p.taskname, p.embeddings, p.template, p.style, p.base_model, p.metrics, p.source,
                                p.created_at, encoding=p.encoding) for p in existing.values()]
    else:
        log.info("adding %s to the restored table %s", [p.taskname for p in new], cfg.table_uri)
    return PromptTable(cfg.table_uri, endpoint_url=cfg.storage.endpoint_url).publish(new)


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

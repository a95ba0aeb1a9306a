"""The training loop: NeMo's batch semantics, AdamW + warmup/cosine, validation, best prompts, publishing.

global_batch_size = micro_batch_size x data-parallel size x accumulation steps. Each optimizer step
averages the token loss of each micro-batch over the accumulation steps (as NeMo does). Validation
runs every `val_check_interval`; the prompts with the lowest validation loss are the ones published.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import torch
from tqdm.auto import tqdm

from promptray.platform.batching import Batch, collate, epoch_batches
from promptray.platform.config import PromptLearningConfig
from promptray.platform.dataset import Example, build_examples
from promptray.platform.engine import Engine, build_engine
from promptray.platform.errors import ConfigError
from promptray.platform.metrics import MetricsWriter, plot_learning_curve
from promptray.platform.prompt_table import PromptTable, TaskPrompt
from promptray.platform.stores import set_default_endpoint

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    table_uri: str
    versions: dict[str, str]  # taskname -> published version
    steps: int
    best_val_loss: Optional[float]
    final_train_loss: Optional[float]
    tokens_per_s: float
    run_dir: Path
    metrics_path: Path
    plot_path: Optional[Path]
    prompts: dict[str, torch.Tensor] = field(default_factory=dict)  # the published new-task embeddings


# ----------------------------------------------------------------------------- schedule

def lr_lambda(cfg: PromptLearningConfig, total_steps: int):
    """Linear warmup, optional constant phase, cosine decay to min_lr (NeMo's CosineAnnealing)."""
    sched, lr = cfg.model.optim.sched, cfg.model.optim.lr
    if sched is None or sched.name.lower() in {"constant", "none"}:
        return lambda step: 1.0
    warmup = sched.warmup_steps if sched.warmup_steps is not None else int((sched.warmup_ratio or 0) * total_steps)
    floor = sched.min_lr / lr if lr else 0.0

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        decay = max(1, total_steps - warmup - sched.constant_steps)
        progress = min(1.0, max(0, step - warmup - sched.constant_steps) / decay)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def total_steps(cfg: PromptLearningConfig, num_examples: int) -> int:
    t = cfg.trainer
    if t.max_steps and t.max_steps > 0:
        return t.max_steps
    return max(1, t.max_epochs * (num_examples // cfg.global_batch_size))


def val_interval(cfg: PromptLearningConfig, num_examples: int, steps: int) -> int:
    v = cfg.trainer.val_check_interval
    if isinstance(v, int):
        return max(1, v)  # a number of steps
    per_epoch = max(1, num_examples // cfg.global_batch_size)
    return max(1, min(steps, int(per_epoch * float(v))))


def val_batches(cfg: PromptLearningConfig, num_val: int) -> int:
    """limit_val_batches: an int is a number of batches, a float a fraction of them (Lightning's rule)."""
    limit, available = cfg.trainer.limit_val_batches, math.ceil(num_val / cfg.model.micro_batch_size)
    return min(available, limit) if isinstance(limit, int) else max(1, math.ceil(available * limit))


# ----------------------------------------------------------------------------- data

def load_data(cfg: PromptLearningConfig, engine: Engine) -> tuple[list[Example], list[Example]]:
    templates = [engine.templates[n] for n in engine.new_tasks]
    d = cfg.model.data
    max_len = min(cfg.max_seq_length, engine.model.max_positions)
    if max_len < cfg.max_seq_length:
        log.info("max_seq_length %d exceeds the base model's %d positions; using %d", cfg.max_seq_length,
                 engine.model.max_positions, max_len)
    hint = (f" (training data may only hold records of model.new_tasks {engine.new_tasks}; existing tasks are "
            "frozen)")
    kw = dict(templates=templates, tokenizer=engine.tokenizer, max_seq_length=max_len,
              add_eos=d.add_eos, add_bos=d.add_bos, unknown_hint=hint)
    train, stats = build_examples(d.train_ds, **kw)
    log.info("training data: %s", stats.summary())
    val = build_examples(d.validation_ds, **kw)[0] if d.validation_ds else []
    if len(train) < cfg.model.micro_batch_size:
        raise ConfigError(f"model.data.train_ds: {len(train)} usable training examples for new tasks "
                          f"{engine.new_tasks}; need at least micro_batch_size={cfg.model.micro_batch_size}")
    return train, val


def micro_batches(train: list[Example], cfg: PromptLearningConfig, pad_id: int, rank: int = 0,
                  world: int = 1) -> Iterator[tuple[int, Batch]]:
    """Endless (epoch, micro-batch) stream; with several workers each takes its shard of every global step."""
    per_step = cfg.model.micro_batch_size * world
    stream = epoch_batches([len(e) for e in train], per_step, cfg.model.seed, cfg.model.data.shuffle,
                           cfg.model.data.group_by_length)
    for epoch, idx in stream:
        mine = idx[rank::world]
        yield epoch, collate([train[i] for i in mine], pad_id)


@torch.no_grad()
def validation_loss(engine: Engine, val: list[Example], batch_size: int, pad_id: int,
                    limit: Optional[int] = None) -> float:
    """Mean token loss over the validation set (the first `limit` batches, shortest examples first)."""
    model = engine.model
    model.eval()
    total, count = 0.0, 0
    ordered = sorted(val, key=len)
    for i, start in enumerate(range(0, len(ordered), batch_size)):
        if limit is not None and i >= limit:
            break
        loss_sum, n = model.loss(collate(ordered[start:start + batch_size], pad_id))
        total, count = total + float(loss_sum), count + n
    model.train()
    return total / max(count, 1)


# ----------------------------------------------------------------------------- loop

def train_step(engine: Engine, stream: Iterator[tuple[int, Batch]], accumulation: int,
               optimizer: torch.optim.Optimizer, clip: Optional[float]) -> tuple[float, int, int]:
    """One optimizer step over `accumulation` micro-batches: (mean loss, tokens seen, epoch)."""
    params = engine.model.trainable_parameters()
    loss_total, tokens, epoch = 0.0, 0, 0
    for _ in range(accumulation):
        epoch, batch = next(stream)
        loss_sum, n = engine.model.loss(batch)
        loss = loss_sum / max(n, 1) / accumulation
        loss.backward()
        loss_total += float(loss.detach())
        tokens += batch.num_tokens
    if clip:
        torch.nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_total, tokens, epoch


def make_optimizer(cfg: PromptLearningConfig, engine: Engine) -> torch.optim.Optimizer:
    o = cfg.model.optim
    return torch.optim.AdamW(engine.model.trainable_parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                             weight_decay=o.weight_decay)


def train(cfg: PromptLearningConfig, engine: Optional[Engine] = None, progress: bool = True,
          publish: bool = True) -> TrainResult:
    """Run prompt learning for `cfg.model.new_tasks` and publish the best prompts to the table."""
    _check_finetune(cfg)
    if cfg.storage.endpoint_url:
        set_default_endpoint(cfg.storage.endpoint_url)
    torch.manual_seed(cfg.model.seed)
    engine = engine or build_engine(cfg)
    pad_id = engine.tokenizer.pad_token_id
    train_ex, val_ex = load_data(cfg, engine)
    steps = total_steps(cfg, len(train_ex))
    every = val_interval(cfg, len(train_ex), steps)
    optimizer = make_optimizer(cfg, engine)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, steps))
    run_dir = cfg.run_dir
    writer = MetricsWriter(run_dir / "metrics.jsonl")
    stream = micro_batches(train_ex, cfg, pad_id)
    best_val, best, last_loss, tokens, train_s, window = None, None, None, 0, 0.0, []
    val_limit = val_batches(cfg, len(val_ex))
    engine.model.train()
    bar = tqdm(range(1, steps + 1), desc=f"tuning {','.join(engine.new_tasks)}", disable=not progress,
               unit="step", dynamic_ncols=True)
    for step in bar:
        t0 = time.perf_counter()
        loss, n_tok, epoch = train_step(engine, stream, cfg.accumulation, optimizer, cfg.trainer.gradient_clip_val)
        scheduler.step()
        train_s += time.perf_counter() - t0  # tokens/s counts training only, not validation
        tokens, last_loss = tokens + n_tok, loss
        window.append(loss)
        rec = {"lr": scheduler.get_last_lr()[0], "epoch": epoch, "tokens_per_s": round(tokens / train_s, 1)}
        if val_ex and (step % every == 0 or step == steps):
            rec["val_loss"] = round(validation_loss(engine, val_ex, cfg.model.micro_batch_size, pad_id, val_limit), 5)
            if best_val is None or rec["val_loss"] < best_val:
                best_val, best = rec["val_loss"], (step, engine.model.bank.export())
        if step % cfg.trainer.log_every_n_steps == 0 or "val_loss" in rec or step == steps:
            writer.log(step, loss=round(sum(window) / len(window), 5), **rec)  # mean since the last record
            window = []
        bar.set_postfix(loss=f"{loss:.3f}", **({"val": f"{rec['val_loss']:.3f}"} if "val_loss" in rec else {}))
    tok_s = tokens / max(train_s, 1e-9)
    prompts = best[1] if best else engine.model.bank.export()
    plot = plot_learning_curve(writer.records, run_dir / "learning_curve.png", title=cfg.name)
    metrics = {"best_val_loss": best_val, "best_step": best[0] if best else steps, "final_train_loss": last_loss,
               "steps": steps, "tokens_per_s": round(tok_s, 1)}
    versions = publish_prompts(cfg, engine, prompts, metrics) if publish else {}
    _write_summary(run_dir, cfg, metrics, versions)
    return TrainResult(cfg.table_uri, versions, steps, best_val, last_loss, tok_s, run_dir, writer.path, plot,
                       prompts)


def _check_finetune(cfg: PromptLearningConfig) -> None:
    if cfg.model.lm_finetune and cfg.model.existing_tasks:
        raise ConfigError("model.lm_finetune: true together with existing_tasks; fine-tuning changes the base "
                          "model, so the existing tasks' prompts would no longer fit it. Tune all tasks in one "
                          "run, or turn lm_finetune off")


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


def _write_summary(run_dir: Path, cfg: PromptLearningConfig, metrics: dict, versions: dict[str, str]) -> None:
    summary = {"name": cfg.name, "table": cfg.table_uri, "versions": versions, **metrics}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    (run_dir / "config.json").write_text(cfg.model_dump_json(indent=2))

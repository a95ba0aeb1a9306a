"""The training loop as an object: run it on one process or on each worker of a data-parallel group,
hand a per-step callback to the caller (Ray reports, checkpoints), save and restore its full state.

The state (trainable parameters, optimizer, scheduler, step, data position, best-so-far prompts,
metrics records and the loss window, RNG) is enough to continue a run exactly where it stopped.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from tqdm.auto import tqdm

from promptray.platform.config.schema import PromptLearningConfig
from promptray.platform.errors import PromptrayError
from promptray.platform.train.distributed import Dist, all_reduce_sums
from promptray.platform.train.engine import Engine
from promptray.platform.train.metrics import MetricsWriter, plot_learning_curve
from promptray.platform.train.publishing import publish_prompts, write_summary
from promptray.platform.train.steps import (
    load_data,
    lr_lambda,
    make_optimizer,
    micro_batches,
    total_steps,
    train_step,
    val_batches,
    val_interval,
    validation_loss,
)

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a finished run returns (`TrainLoop.finish` on the main worker): where and which versions it
    published, step count, best validation and final training loss (mean token cross-entropy, nats; None
    without validation data / before a step), throughput in tokens per second of training time, the run
    folder, its metrics.jsonl and learning-curve plot, the new tasks' published float32 (n, H) prompts, and the
    step they are from."""

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
    best_step: Optional[int] = None  # the step whose prompts were published (lowest val_loss, else the last)


@dataclass
class LoopState:
    """The loop's progress besides tensors; plain values, so it saves as-is in a checkpoint."""

    step: int = 0
    position: int = 0  # global micro-batches consumed by all workers together
    tokens: int = 0  # tokens trained on by all workers together
    train_s: float = 0.0  # time spent in optimizer steps (tokens/s leaves validation out)
    last_loss: Optional[float] = None
    window: list[float] = field(default_factory=list)  # step losses since the last metrics record
    best_val: Optional[float] = None
    best_step: Optional[int] = None
    records: list[dict[str, Any]] = field(default_factory=list)  # metrics records so far


@dataclass
class StepInfo:
    """What the per-step callback sees: the step, the metrics record logged at it (or None), the loop."""

    step: int
    total_steps: int
    record: Optional[dict[str, Any]]
    loop: TrainLoop


class CheckpointMismatchError(PromptrayError):
    """A checkpoint does not fit the run that tries to resume from it (other tasks or prompt shapes)."""


class TrainLoop:
    """One worker's training loop (or the one process's) over an `Engine`, built by trainer.build_loop.

    Holds the config, the engine, the worker `group` (`Dist`: rank and world_size; `Dist()` is one process), the
    `device` batches are moved to (None: where they are made, the CPU), the training and validation examples
    (`load_data`), the step plan (`steps` optimizer steps, validation every `every` steps over at most
    `val_limit` batches, `accumulation` micro-batches per step and worker), the AdamW optimizer and
    its LambdaLR schedule (steps.lr_lambda: warmup, constant, cosine to min_lr, as NeMo's CosineAnnealing),
    the `LoopState`, and the best-so-far prompts (`best_prompts`: taskname -> float32 (n, H) on the CPU,
    from `PromptBank.export` at the lowest validation loss).

    `run(on_step)` trains from the current state to the last step; `finish()` publishes the best prompts
    (the last ones without validation data) and writes summary.json on the main worker; `state_dict()` /
    `load_state_dict()` save and restore everything a resumed run needs, so it continues exactly.

    Errors: ConfigError from `load_data` (fewer usable training examples than micro_batch_size), dataset
    errors (DatasetError) while reading the data, CheckpointMismatchError from `load_state_dict` for a
    checkpoint of other trainable parameters, and the table's errors (PromptTableError) when publishing.
    """

    def __init__(self, cfg: PromptLearningConfig, engine: Engine, group: Dist = Dist(),
                 device: Optional[torch.device] = None, progress: bool = True):
        self.cfg, self.engine, self.group, self.device = cfg, engine, group, device
        self.pad_id = engine.tokenizer.pad_token_id
        self.train_ex, self.val_ex = load_data(cfg, engine)
        self.steps = total_steps(cfg, len(self.train_ex))
        self.every = val_interval(cfg, len(self.train_ex), self.steps)
        self.val_limit = val_batches(cfg, len(self.val_ex))
        self.accumulation = cfg.accumulation_for(group.world_size)
        self.optimizer = make_optimizer(cfg, engine)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg, self.steps))
        self.writer = MetricsWriter(cfg.run_dir / "metrics.jsonl") if group.is_main else None
        self.state = LoopState()
        self.best_prompts: Optional[dict[str, torch.Tensor]] = None
        self.progress = progress and group.is_main

    # ------------------------------------------------------------------ running
    def run(self, on_step: Optional[Callable[[StepInfo], None]] = None) -> None:
        """Train from the current state to the last step, calling `on_step` after every step."""
        g = self.group
        stream = micro_batches(self.train_ex, self.cfg, self.pad_id, g.rank, g.world_size, start=self.state.position)
        self.engine.model.train()
        bar = tqdm(range(self.state.step + 1, self.steps + 1), desc=f"tuning {','.join(self.engine.new_tasks)}",
                   disable=not self.progress, unit="step", dynamic_ncols=True)
        for step in bar:
            record, loss = self.step(step, stream)
            val = record.get("val_loss") if record else None
            bar.set_postfix(loss=f"{loss:.3f}", **({"val": f"{val:.3f}"} if val is not None else {}))
            if on_step is not None:
                on_step(StepInfo(step, self.steps, record, self))

    def step(self, step: int, stream) -> tuple[Optional[dict[str, Any]], float]:
        """One optimizer step (+ validation when due): (the metrics record if one is logged, step loss)."""
        s, cfg = self.state, self.cfg
        t0 = time.perf_counter()
        loss, n_tok, epoch = train_step(self.engine, stream, self.accumulation, self.optimizer,
                                        cfg.trainer.gradient_clip_val, self.group, self.device)
        self.scheduler.step()
        s.train_s += time.perf_counter() - t0  # tokens/s counts training only, not validation
        loss, n_tok = self._global(loss, n_tok)
        s.step, s.position = step, s.position + self.accumulation * self.group.world_size
        s.tokens, s.last_loss = s.tokens + n_tok, loss
        s.window.append(loss)
        rec = {"lr": self.scheduler.get_last_lr()[0], "epoch": epoch, "tokens_per_s": round(s.tokens / s.train_s, 1)}
        if self.val_ex and (step % self.every == 0 or step == self.steps):
            rec["val_loss"] = self._validate(step)
        if step % cfg.trainer.log_every_n_steps == 0 or "val_loss" in rec or step == self.steps:
            return self._log(step, loss=round(sum(s.window) / len(s.window), 5), **rec), loss
        return None, loss

    def _global(self, loss: float, tokens: int) -> tuple[float, int]:
        """This step's loss (mean over workers) and tokens (sum over workers)."""
        if not self.group.active:
            return loss, tokens
        total_loss, total_tokens = all_reduce_sums([loss, tokens], self.group)
        return total_loss / self.group.world_size, int(total_tokens)

    def _validate(self, step: int) -> float:
        val = round(validation_loss(self.engine, self.val_ex, self.cfg.model.micro_batch_size, self.pad_id,
                                    self.val_limit, self.group, self.device), 5)
        s = self.state
        if s.best_val is None or val < s.best_val:
            s.best_val, s.best_step = val, step
            self.best_prompts = self.engine.model.bank.export()
        return val

    def _log(self, step: int, **values: Any) -> dict[str, Any]:
        """Record the metrics (into metrics.jsonl on the main worker); the loss window starts over."""
        rec = self.writer.log(step, **values) if self.writer else {"step": step, **values}
        if not self.writer:
            self.state.records.append(rec)
        self.state.window = []
        return rec

    # ------------------------------------------------------------------ finishing
    def finish(self, publish: bool = True, run: Optional[dict] = None) -> Optional[TrainResult]:
        """On the main worker: plot, publish the best prompts, write summary.json. Others return None.
        `run` identifies a job run that may finish twice (see publishing.publish_prompts)."""
        if not self.group.is_main:
            return None
        s, cfg, run_dir = self.state, self.cfg, self.cfg.run_dir
        prompts = self.best_prompts if self.best_prompts is not None else self.engine.model.bank.export()
        published_step = s.best_step or self.steps  # without validation data: the last step's prompts
        plot = plot_learning_curve(self.writer.records, run_dir / "learning_curve.png", title=cfg.name,
                                   published_step=published_step)
        tok_s = s.tokens / max(s.train_s, 1e-9)
        metrics = {"best_val_loss": s.best_val, "best_step": published_step,
                   "final_train_loss": s.last_loss, "steps": self.steps, "tokens_per_s": round(tok_s, 1)}
        versions = publish_prompts(cfg, self.engine, prompts, metrics, run) if publish else {}
        write_summary(run_dir, cfg, metrics, versions)
        return TrainResult(cfg.table_uri, versions, self.steps, s.best_val, s.last_loss, tok_s, run_dir,
                           self.writer.path, plot, prompts, published_step)

    # ------------------------------------------------------------------ checkpoint state
    def _trainable(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.engine.model.named_parameters() if p.requires_grad}

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs; plain tensors and values (loads with weights_only=True)."""
        loop = asdict(self.state)
        if self.writer:
            loop["records"] = list(self.writer.records)
        return {"loop": loop, "trainable": {n: p.detach().cpu().clone() for n, p in self._trainable().items()},
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "best_prompts": self.best_prompts, "rng": torch.get_rng_state(), **self._cuda_rng()}

    def _cuda_rng(self) -> dict[str, torch.Tensor]:
        """The GPU's random state when training there (p-tuning dropout draws from it)."""
        on_cuda = self.device is not None and self.device.type == "cuda"
        return {"cuda_rng": torch.cuda.get_rng_state(self.device)} if on_cuda else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved state (of the same config; the number of workers may differ)."""
        params = self._trainable()
        saved = state["trainable"]
        wrong = sorted(set(params) ^ set(saved)) + [n for n in params if n in saved and
                                                    saved[n].shape != params[n].shape]
        if wrong:
            raise CheckpointMismatchError(f"the checkpoint does not fit this run's trainable parameters "
                                          f"(differences: {wrong[:5]}); resume with the config it was saved from")
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(saved[n].to(p.device))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.best_prompts, self.state = state["best_prompts"], LoopState(**state["loop"])
        torch.set_rng_state(state["rng"])
        if "cuda_rng" in state and self.device is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        if self.writer:
            self._restore_records(self.state.records)

    def _restore_records(self, records: list[dict[str, Any]]) -> None:
        """Rewrite metrics.jsonl with the records up to the checkpoint; time_s continues from there."""
        self.writer.path.write_text("".join(json.dumps(r) + "\n" for r in records))
        self.writer.records = list(records)
        self.writer.start = time.time() - (records[-1]["time_s"] if records else 0.0)

"""The pieces of a training run: schedule, step counts, data streams, one optimizer step, validation.

global_batch_size = micro_batch_size x data-parallel size x accumulation steps. Each optimizer step
averages the token loss of each micro-batch over the accumulation steps (as NeMo does). With several
workers, the micro-batch order does not depend on the number of workers: global micro-batch i goes to
worker i % world_size, so a step sees the same examples on 1 worker or on N, and the gradients (averaged
over the workers) are the same.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Optional

import torch

from promptray.platform.config.schema import PromptLearningConfig
from promptray.platform.data.batching import Batch, collate, epoch_batches, to_device
from promptray.platform.data.dataset import Example, Tokenization, build_examples
from promptray.platform.errors import ConfigError
from promptray.platform.train.distributed import Dist, all_reduce_sums, average_gradients
from promptray.platform.train.engine import Engine

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- schedule

def lr_lambda(cfg: PromptLearningConfig, total_steps: int):
    """Linear warmup, optional constant phase, cosine decay to min_lr (NeMo's CosineAnnealing), as a
    LambdaLR factor of `step` (0-based optimizer steps; it stays at min_lr / lr after `total_steps`).

    The decay phase equals transformers' get_cosine_with_min_lr_schedule_with_warmup (no warmup, over the
    steps after warmup and constant_steps; tests/platform/train/test_schedule.py). transformers' warmup starts at
    lr 0 (NeMo's at lr / warmup_steps) and it has no constant phase, so the schedule is NeMo's own here."""
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
    """Optimizer steps of the run: trainer.max_steps when > 0, else max_epochs x the full global batches of
    an epoch (at least 1)."""
    t = cfg.trainer
    if t.max_steps and t.max_steps > 0:
        return t.max_steps
    return max(1, t.max_epochs * (num_examples // cfg.global_batch_size))


def val_interval(cfg: PromptLearningConfig, num_examples: int, steps: int) -> int:
    """Steps between validations: trainer.val_check_interval as an int is a number of steps, a float a
    fraction of an epoch's steps (at most `steps`); at least 1."""
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

def length_limit_name(cfg: PromptLearningConfig, limit: int) -> tuple[str, str]:
    """(the setting that bounds an example's length, with its value, e.g. 'model.encoder_seq_length=16' or
    the base model's positions when they are the tighter bound; how to make room)."""
    if limit < cfg.max_seq_length:
        return (f"the base model's {limit} positions (max_position_embeddings)",
                "lower total_virtual_tokens or shorten those records")
    key = "model.data.max_seq_length" if cfg.model.data.max_seq_length else "model.encoder_seq_length"
    return f"max_seq_length {limit} ({key})", f"raise {key}, lower total_virtual_tokens or shorten those records"


def load_data(cfg: PromptLearningConfig, engine: Engine, *, tasks: Optional[list[str]] = None,
              sources: Optional[tuple[list, list]] = None,
              tokenization: Optional[Tokenization] = None) -> tuple[list[Example], list[Example]]:
    """(training, validation) examples of the new tasks (or of `tasks`, names in `engine.templates`), at most
    min(max_seq_length, the model's positions) tokens long, from model.data's files (or from `sources`:
    (training, validation) records already read, e.g. a search pack's candidates; `tokenization`: the
    token ids of texts they share, see `build_examples`). ConfigError when fewer
    training examples than micro_batch_size remain; the data readers' errors (DatasetError) for missing or
    malformed files."""
    names = tasks or engine.new_tasks
    templates = [engine.templates[n] for n in names]
    d = cfg.model.data
    train_src, val_src = sources if sources is not None else (d.train_ds, d.validation_ds or [])
    max_len = min(cfg.max_seq_length, engine.model.max_positions)
    if max_len < cfg.max_seq_length:
        log.info("max_seq_length %d exceeds the base model's %d positions; using %d", cfg.max_seq_length,
                 engine.model.max_positions, max_len)
    hint = (f" (training data may only hold records of model.new_tasks {names}; existing tasks are "
            "frozen)")
    kw = dict(templates=templates, tokenizer=engine.tokenizer, max_seq_length=max_len,
              add_eos=d.add_eos, add_bos=d.add_bos, unknown_hint=hint,
              endpoint_url=cfg.storage.endpoint_url, tokenization=tokenization)
    train, stats = build_examples(train_src, **kw)
    log.info("training data: %s", stats.summary())
    val = build_examples(val_src, **kw)[0] if val_src else []
    if len(train) < cfg.model.micro_batch_size:
        dropped = sum(stats.dropped.values())
        limit, fix = length_limit_name(cfg, max_len)
        why = f"; {stats.dropped_reasons(engine.templates, limit)}; {fix}" if dropped else ""
        raise ConfigError(f"model.data.train_ds: {len(train)} usable training examples for new tasks "
                          f"{names}; need at least micro_batch_size={cfg.model.micro_batch_size} "
                          f"({stats.summary()}{why})")
    return train, val


def micro_batches(train: list[Example], cfg: PromptLearningConfig, pad_id: int, rank: int = 0,
                  world_size: int = 1, start: int = 0) -> Iterator[tuple[int, Batch]]:
    """Endless (epoch, micro-batch) stream of this worker's micro-batches.

    The global stream (micro_batch_size examples each, order fixed by the seed) is the same for any number
    of workers; global micro-batch i goes to worker i % world_size, so each optimizer step's world_size x
    accumulation micro-batches are split evenly. `start` skips the first global micro-batches (resuming)."""
    stream = epoch_batches([len(e) for e in train], cfg.model.micro_batch_size, cfg.model.seed,
                           cfg.model.data.shuffle, cfg.model.data.group_by_length)
    for i, (epoch, idx) in enumerate(stream):
        if i >= start and i % world_size == rank:
            yield epoch, collate([train[j] for j in idx], pad_id)


@torch.no_grad()
def validation_loss(engine: Engine, val: list[Example], batch_size: int, pad_id: int,
                    limit: Optional[int] = None, group: Dist = Dist(), device: Optional[torch.device] = None
                    ) -> float:
    """Mean token loss over the validation set (the first `limit` batches, shortest examples first).

    With several workers, batch i is evaluated by worker i % world_size and the sums are all-reduced; a worker
    without a batch in the last round runs batch 0 and ignores it (a sharded model needs every worker in
    every forward)."""
    model = engine.model
    was_training = model.training
    model.eval()
    ordered = sorted(val, key=len)
    starts = list(range(0, len(ordered), batch_size))[:limit]
    total, count = 0.0, 0
    for r in range(math.ceil(len(starts) / group.world_size)):
        i = r * group.world_size + group.rank
        s = starts[i] if i < len(starts) else starts[0]
        loss_sum, n = model(to_device(collate(ordered[s:s + batch_size], pad_id), device))
        if i < len(starts):
            total, count = total + float(loss_sum), count + n
    model.train(was_training)
    total, count = all_reduce_sums([total, count], group)
    return total / max(count, 1)


# ----------------------------------------------------------------------------- loop

def train_step(engine: Engine, stream: Iterator[tuple[int, Batch]], accumulation: int,
               optimizer: torch.optim.Optimizer, clip: Optional[float], group: Dist = Dist(),
               device: Optional[torch.device] = None) -> tuple[float, int, int]:
    """One optimizer step over `accumulation` micro-batches: (mean loss, tokens seen, epoch) of this worker.
    With several workers the trainable parameters' gradients are averaged before clipping and stepping."""
    params = engine.model.trainable_parameters()
    loss_total, tokens, epoch = accumulate_gradients(engine, stream, accumulation, device)
    average_gradients(params, group)
    if clip:
        torch.nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_total, tokens, epoch


def accumulate_gradients(engine: Engine, stream: Iterator[tuple[int, Batch]], accumulation: int,
                         device: Optional[torch.device] = None) -> tuple[float, int, int]:
    """The forward and backward passes of one optimizer step: `accumulation` micro-batches of `stream`, each
    loss (mean token cross-entropy) divided by `accumulation`, gradients summed into the parameters' .grad.
    Returns (mean loss, tokens seen, epoch)."""
    loss_total, tokens, epoch = 0.0, 0, 0
    for _ in range(accumulation):
        epoch, batch = next(stream)
        loss_sum, n = engine.model(to_device(batch, device))  # forward = loss (an FSDP root)
        loss = loss_sum / max(n, 1) / accumulation
        loss.backward()
        loss_total += float(loss.detach())
        tokens += batch.num_tokens
    return loss_total, tokens, epoch


def make_optimizer(cfg: PromptLearningConfig, engine: Engine) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters with model.optim's lr, betas, eps and weight_decay."""
    o = cfg.model.optim
    return torch.optim.AdamW(engine.model.trainable_parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                             weight_decay=o.weight_decay)

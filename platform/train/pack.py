"""Packed candidates: several prompt-tuning candidates of one task trained in one process on one frozen model.

A search candidate is a full training config of the task (its virtual-token count and splits, its init, its
learning rate and schedule). A pack holds each candidate as its own prompt in the model's bank (named by the
candidate), its own AdamW parameter group and LambdaLR schedule (`steps.lr_lambda` of its config), its own
gradient clipping, its own micro-batch stream over the same records (read once) rendered with its template,
and its own best-so-far prompt. The base model is loaded once for the pack.

Each optimizer step runs every live candidate's accumulation micro-batches through `steps.train_step`
exactly as a run of that candidate alone would (its parameter is the only one with a gradient, so AdamW and
clipping see only it): a candidate trained in a pack ends equal, within float tolerance, to the same candidate
trained alone (tests/platform/train/test_pack.py). `stop(name)` takes a candidate out (successive halving):
it trains no more and costs nothing from then on.

With `shared_forward`, each micro-step runs every live candidate's micro-batch (the same examples, each
rendered with its own prompt) as ONE mixed-task batch: the model's per-task losses
(`PromptLearningModel.task_losses`) are each normalised by the candidate's own token count and summed, so
one backward pass gives every prompt exactly its own gradient (a row's loss depends on its own prompt
alone, the base model is frozen); clipping is per candidate, then one AdamW step. Fewer, larger forward
passes: what an accelerator wants; the same end state within float tolerance (tested).

With `streams` > 1 (for the CPU), that many candidates run their passes at once on the pack's threads, each
thread on its share of torch's intra-op threads (torch kernels release the GIL); validations likewise
(`validate_all`). The clipping and the AdamW step come after, as above: the same values as one at a time, up
to the rounding of a different thread count (tested). `close()` stops the threads.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import torch

from promptray.platform.config.schema import PromptLearningConfig
from promptray.platform.data.batching import concat_batches, to_device
from promptray.platform.data.dataset import Example, Record, Tokenization, read_records
from promptray.platform.data.encoding import TaskEncoding
from promptray.platform.errors import ConfigError, DatasetError, PromptrayError
from promptray.platform.generation.loading import PromptModel
from promptray.platform.model.prompt_encoder import PromptBank
from promptray.platform.train.distributed import Dist, average_gradients
from promptray.platform.train.engine import Engine, build_bank
from promptray.platform.train.steps import (
    accumulate_gradients,
    load_data,
    lr_lambda,
    micro_batches,
    total_steps,
    train_step,
    val_batches,
    validation_loss,
)

State = Literal["running", "stopped", "finished"]


@dataclass
class Candidate:
    """One candidate of a pack: its config, examples, stream, and what it has done so far. `curve` holds one
    record per validation ({"step", "val_loss", and the objective's value when one is given})."""

    name: str
    cfg: PromptLearningConfig
    train: list[Example]
    val: list[Example]
    steps: int  # planned optimizer steps (the schedule's length)
    stream: Any = None
    done: int = 0  # optimizer steps trained
    state: State = "running"
    last_loss: Optional[float] = None
    best: Optional[float] = None
    best_step: Optional[int] = None
    best_prompt: Optional[torch.Tensor] = None  # float32 (n, H) on the CPU, at `best`
    curve: list[dict[str, Any]] = field(default_factory=list)


def candidate_records(records: list[Record], task: str, name: str) -> list[Record]:
    """The task's records as records of candidate `name` (a pack reads its data once)."""
    return [Record({**r.data, "taskname": name}, r.origin) for r in records if r.data.get("taskname") == task]


class PackLoop:
    """Train `candidates` (name -> that candidate's config: prompt tuning, one new task `task`, the same data
    and batch settings) on `engine` (built from any of them: its base model, existing tasks and tokenizer).

    `metric` ("val_loss", or the name of the value `validate`'s objective returns) and `mode` ("min"/"max")
    decide each candidate's best prompt; `keep="last"` keeps each candidate's latest validated value and
    prompt instead (`Candidate.best` then holds the latest value: what successive halving compares at a
    rung, as ASHA compares the values reported at its milestones; the maximum of several noisy readings
    would favour an early lucky one over the end of the candidate's schedule). `shared_forward`: the running
    candidates' micro-batches go through one mixed-task forward pass per micro-step instead of one each (same
    gradients; see the module doc).
    `step()` trains every running candidate one optimizer step; `validate(name, objective)` records a
    validation; `stop(name)` ends a candidate; `prompts(name)` is its best (else current) float32 (n, H)
    prompt on the CPU.

    A candidate whose data fail (`steps.load_data`'s ConfigError: too few usable examples at its count; a
    DatasetError) is left out and kept in `failed` (name -> the error); the others train.

    Errors: ConfigError for a p-tuning candidate, one that does not tune `task` alone, or candidates whose
    batch settings differ; the first candidate's data error when every candidate's data fail."""

    def __init__(self, engine: Engine, task: str, candidates: dict[str, PromptLearningConfig], *,
                 metric: str = "val_loss", mode: str = "min", group: Dist = Dist(),
                 device: Optional[torch.device] = None, shared_forward: bool = False,
                 keep: Literal["best", "last"] = "best", streams: int = 1):
        _check_candidates(task, candidates)
        self.engine, self.task, self.group, self.device = engine, task, group, device
        self.shared_forward = shared_forward
        self.streams = max(1, streams) if not group.active else 1  # collectives stay on one thread
        self._pool: Optional[ThreadPoolExecutor] = None
        self.metric, self.mode, self.keep = metric, mode, keep
        first = next(iter(candidates.values()))
        d = first.model.data
        self.records = (read_records(d.train_ds, endpoint_url=first.storage.endpoint_url),
                        read_records(d.validation_ds or [], endpoint_url=first.storage.endpoint_url))
        self.tokenization = Tokenization.of(engine.tokenizer)  # every candidate encodes the same texts
        for name, cfg in candidates.items():
            engine.templates[name] = _template(cfg, task).model_copy(update={"taskname": name})
        self.candidates: dict[str, Candidate] = {}
        self.failed: dict[str, PromptrayError] = {}  # candidates whose data do not fit (the others train)
        for name, cfg in candidates.items():
            try:
                self.candidates[name] = self._candidate(name, cfg)
            except (ConfigError, DatasetError) as e:
                self.failed[name] = e
        if not self.candidates:
            raise next(iter(self.failed.values()))
        engine.model.bank = self._bank({n: candidates[n] for n in self.candidates})
        if device is not None:
            engine.model.bank.to(device)
        self.optimizer = torch.optim.AdamW([self._group(c) for c in self.candidates.values()])
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, [lr_lambda(c.cfg, c.steps) for c in self.candidates.values()])
        self.step_count = 0

    def _bank(self, candidates: dict[str, PromptLearningConfig]) -> PromptBank:
        """The engine's frozen tasks plus one tuned prompt per candidate, initialised as a run of that candidate
        alone initialises its task's prompt (engine.build_bank with the candidate's config)."""
        e, vocab = self.engine, self.engine.model.lm.get_input_embeddings()
        bank = PromptBank(e.model.hidden_size)
        for name, prompt in e.existing.items():
            bank.add_frozen(name, prompt.embeddings)
        for name, cfg in candidates.items():
            template = _template(cfg, self.task)
            alone = build_bank(cfg, {self.task: template}, {}, e.tokenizer, vocab)
            bank.add_tuned(name, alone.get(self.task).detach())
        return bank

    def _candidate(self, name: str, cfg: PromptLearningConfig) -> Candidate:
        train_rec, val_rec = (candidate_records(r, self.task, name) for r in self.records)
        train, val = load_data(cfg, self.engine, tasks=[name], sources=(train_rec, val_rec),
                               tokenization=self.tokenization)
        c = Candidate(name, cfg, train, val, total_steps(cfg, len(train)))
        c.stream = micro_batches(train, cfg, self.engine.tokenizer.pad_token_id, self.group.rank, self.group.world_size)
        return c

    def _group(self, c: Candidate) -> dict[str, Any]:
        o = c.cfg.model.optim
        return {"params": [self.engine.model.bank.get(c.name)], "lr": o.lr, "betas": tuple(o.betas), "eps": o.eps,
                "weight_decay": o.weight_decay}

    # ------------------------------------------------------------------ training
    @property
    def running(self) -> list[str]:
        return [n for n, c in self.candidates.items() if c.state == "running"]

    def step(self) -> dict[str, float]:
        """One optimizer step of every running candidate: name -> its step loss (mean token cross-entropy).
        A candidate that reaches its planned steps is then "finished"."""
        self.engine.model.train()
        names = self.running
        if self.shared_forward and len(names) > 1:
            losses = self._shared_step(names)
        elif self.streams > 1 and len(names) > 1:
            losses = self._parallel_step(names)
        else:
            losses = {name: self._own_step(self.candidates[name]) for name in names}
        for name, loss in losses.items():
            c = self.candidates[name]
            c.done, c.last_loss = c.done + 1, loss
            if c.done >= c.steps:
                c.state = "finished"
        self.scheduler.step()
        self.step_count += 1
        return losses

    def _own_step(self, c: Candidate) -> float:
        """Candidate `c` alone: its micro-batches through `steps.train_step` (its own forward passes)."""
        acc = c.cfg.accumulation_for(self.group.world_size)
        loss, _, _ = train_step(self.engine, c.stream, acc, self.optimizer, c.cfg.trainer.gradient_clip_val,
                                self.group, self.device)
        return loss

    def _parallel_step(self, names: list[str]) -> dict[str, float]:
        """Candidates `names` on `streams` threads at once, each candidate's forward and backward passes as
        `_own_step` runs them (its own prompt alone gets a gradient); then each candidate's own clipping and one
        AdamW step of all groups, as `_shared_step` ends."""
        def passes(name: str) -> float:
            c = self.candidates[name]
            acc = c.cfg.accumulation_for(self.group.world_size)
            return accumulate_gradients(self.engine, c.stream, acc, self.device)[0]
        losses = dict(zip(names, self._on_streams(passes, names)))
        self._clip_and_step(names)
        return losses

    def _on_streams(self, fn: Callable[[str], Any], names: list[str]) -> list[Any]:
        """[fn(name) for name in names], `streams` at a time on threads, each with its share of torch's
        intra-op threads (torch releases the GIL inside its kernels; a small model's passes use two cores
        less well together than two passes one core each)."""
        threads = torch.get_num_threads()
        share = max(1, threads // self.streams)
        if self._pool is None:  # started once: threads started anew at every step ran slower in a Ray worker
            self._pool = ThreadPoolExecutor(self.streams, thread_name_prefix="pack-stream",
                                            initializer=torch.set_num_threads, initargs=(share,))
        torch.set_num_threads(share)
        try:
            return list(self._pool.map(fn, names))
        finally:
            torch.set_num_threads(threads)

    def close(self) -> None:
        """Stop the threads of a pack with several streams (none run between calls; a no-op otherwise)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _clip_and_step(self, names: list[str]) -> None:
        """Average (several workers), clip each candidate's gradient on its own, one AdamW step, zero grads."""
        bank = self.engine.model.bank
        average_gradients([bank.get(n) for n in names], self.group)
        for n in names:
            clip = self.candidates[n].cfg.trainer.gradient_clip_val
            if clip:
                torch.nn.utils.clip_grad_norm_([bank.get(n)], clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _shared_step(self, names: list[str]) -> dict[str, float]:
        """Candidates `names` on shared forward passes: micro-batch by micro-batch, every candidate's rows in
        one mixed-task batch (`PromptLearningModel.task_losses`), each candidate's loss normalised by its own
        token count, so each prompt gets the gradient it gets alone; then each candidate's own clipping and
        one AdamW step of all groups (a parameter without a gradient is left alone)."""
        first = self.candidates[names[0]].cfg
        acc, pad = first.accumulation_for(self.group.world_size), self.engine.tokenizer.pad_token_id
        losses = dict.fromkeys(names, 0.0)
        for _ in range(acc):
            mixed = concat_batches([next(self.candidates[n].stream)[1] for n in names], pad)
            terms = self.engine.model.task_losses(to_device(mixed, self.device))
            scaled = {n: terms[n][0] / max(terms[n][1], 1) / acc for n in names}  # as train_step scales
            sum(scaled.values()).backward()
            for n in names:
                losses[n] += float(scaled[n].detach())
        self._clip_and_step(names)
        return losses

    def validate(self, name: str, objective: Optional[Callable[[], float]] = None) -> dict[str, Any]:
        """Candidate `name`'s validation record at its current step: val_loss (unless `objective` scores another
        metric) and, with `objective`, its value under `metric`; keeps the candidate's prompt when it is its best
        so far (every time with keep="last")."""
        return self.validate_all({name: objective})[name]

    def validate_all(self, objectives: dict[str, Optional[Callable[[], float]]]) -> dict[str, dict[str, Any]]:
        """`validate` of each candidate in `objectives` (name -> its objective or None), `streams` at a time,
        the model in eval mode throughout; name -> its validation record."""
        model = self.engine.model
        model.eval()
        try:
            recs = self._on_streams(lambda n: self._score(n, objectives[n]), list(objectives)) \
                if self.streams > 1 and len(objectives) > 1 else [self._score(n, o) for n, o in objectives.items()]
        finally:
            model.train()
        return {name: self._keep(name, rec) for name, rec in zip(objectives, recs)}

    def _score(self, name: str, objective: Optional[Callable[[], float]]) -> dict[str, Any]:
        c, pad = self.candidates[name], self.engine.tokenizer.pad_token_id
        rec: dict[str, Any] = {"step": c.done}
        if objective is None or self.metric == "val_loss":
            rec["val_loss"] = round(validation_loss(self.engine, c.val, c.cfg.model.micro_batch_size, pad,
                                                    val_batches(c.cfg, len(c.val)), self.group, self.device), 5)
        if objective is not None:
            rec[self.metric] = round(objective(), 5)
        return rec

    def _keep(self, name: str, rec: dict[str, Any]) -> dict[str, Any]:
        """Record a validation; keep the prompt when it is the candidate's best (always with keep="last")."""
        c, model = self.candidates[name], self.engine.model
        value = rec[self.metric]
        better = c.best is None or (value < c.best if self.mode == "min" else value > c.best)
        if better or self.keep == "last":
            c.best, c.best_step = value, c.done
            c.best_prompt = model.bank.export([name])[name]
        c.curve.append(rec)
        return rec

    def stop(self, name: str) -> None:
        """Candidate `name` trains no more (a successive-halving cut)."""
        if self.candidates[name].state == "running":
            self.candidates[name].state = "stopped"

    def prompts(self, name: str) -> torch.Tensor:
        """The candidate's kept float32 (n, H) prompt: its best-validated one (its latest validated one with
        keep="last"; its current one before any validation)."""
        c = self.candidates[name]
        return c.best_prompt if c.best_prompt is not None else self.engine.model.bank.export([name])[name]

    def prompt_model(self, name: str) -> PromptModel:
        """Candidate `name` as a `PromptModel` sharing the pack's model (what its objective scores), formatted as
        it trains (model.data.add_bos / add_eos)."""
        e, d = self.engine, self.candidates[name].cfg.model.data
        return PromptModel(e.model, e.tokenizer, {name: e.templates[name]}, {name: None}, e.fingerprint,
                           {name: TaskEncoding(add_bos=d.add_bos, add_eos=d.add_eos)})

    @property
    def candidate_steps(self) -> int:
        """Optimizer steps trained, summed over the candidates (the search budget's unit)."""
        return sum(c.done for c in self.candidates.values())


def _template(cfg: PromptLearningConfig, task: str):
    return next(t for t in cfg.templates if t.taskname == task)


def _check_candidates(task: str, candidates: dict[str, PromptLearningConfig]) -> None:
    problems = []
    shared = {(c.model.micro_batch_size, c.global_batch_size, c.model.seed) for c in candidates.values()}
    if len(shared) > 1:
        problems.append(f"pack of task {task!r}: candidates differ in micro_batch_size, global_batch_size or seed "
                        f"{sorted(shared)}; a pack trains them over the same batches, give them equal ones")
    for name, c in candidates.items():
        if c.model.virtual_prompt_style != "prompt-tuning" or c.model.new_tasks != [task]:
            problems.append(f"pack candidate {name!r}: packs train prompt-tuning candidates of one new task "
                            f"{task!r}; got style {c.model.virtual_prompt_style!r}, new_tasks {c.model.new_tasks}")
    if not candidates:
        problems.append(f"pack of task {task!r}: no candidates")
    if problems:
        raise ConfigError(problems)

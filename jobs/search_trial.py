"""One search trial: a real engine training run (no publishing) reporting the objective to Ray Tune at each
validation, so ASHA can stop it early; the prompts of its best validation are saved in its own run dir.

A trial runs as many workers as the train job would (`cfg.world_size`: ray.num_workers, else trainer.devices x
trainer.num_nodes). One worker: the loop runs inside the trial's function trainable, which reserves
`search.cpus_per_trial` (default: its share of the cluster's CPUs, `trial_cpus`) and trains on as many threads.
Several workers (the Ray Train V2 pattern; `Tuner(TorchTrainer)` is gone in Ray 2.60): the function trainable
reserves no CPU and runs a `TorchTrainer` whose workers reserve their own resources (`ray.resources_per_worker`,
default their `cpu_share`, decided by the search driver) and report at each validation; `TuneReportCallback` passes
rank 0's report on to Tune, so ASHA sees every validation and can stop the trial (its Train controller ends with it;
the search driver then frees the workers with release_placement_group).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import torch

from promptray.jobs.config import JobConfig, load_job_config
from promptray.jobs.search_config import SearchConfig
from promptray.jobs.search_objective import objective, task_labels, validation_sample
from promptray.jobs.search_space import trial_config
from promptray.jobs.trainer_factory import cpu_share, torch_trainer, use_reserved_cpus, worker_resources, worker_start
from promptray.platform.data.dataset import read_records
from promptray.platform.data.encoding import TaskEncoding
from promptray.platform.model.devices import resolve_device
from promptray.platform.model.fingerprint import BaseModelFingerprint
from promptray.platform.train.distributed import Dist
from promptray.platform.train.engine import Engine
from promptray.platform.train.loop import StepInfo
from promptray.platform.train.publishing import training_encoding
from promptray.platform.train.trainer import build_loop

BEST_PROMPTS = "best_prompts.pt"
PUBLICATION = "publication.json"  # what publishing BEST_PROMPTS needs of the trial's model (`save_best`)
CANDIDATES = "candidates.json"  # a packed trial's candidates (search_pack.py)
PLACEMENT_GROUP = "placement_group.txt"  # a multi-worker trial's Train placement group (hex id)
# Tune needs a non-empty head bundle per trial; the driver of a multi-worker trial only waits on its Train
# controller, so it asks for a little memory and no CPU (every CPU of the node stays for the Train workers).
DRIVER_RESOURCES = {"cpu": 0, "memory": 64 * 2**20}


def trial_dir(trials_root: str, trial_id: str) -> Path:
    """The folder of one trial's run under the search's trials/ folder."""
    return Path(trials_root) / trial_id


def trial_cpus(search: SearchConfig, node_cpus: list[float], available: Optional[float] = None) -> float:
    """The CPUs a one-worker trial reserves: `search.cpus_per_trial` when set, else its `cpu_share` of the
    cluster with `max_concurrent_trials` trials at once (on one 2-CPU machine: 2 CPUs one at a time, 1 with two);
    `available`: the cluster's CPUs not held by others when the search starts."""
    if search.cpus_per_trial is not None:
        return search.cpus_per_trial
    return cpu_share(search.max_concurrent_trials, node_cpus, available)


def trial_resources(cfg: JobConfig, cpus: float) -> dict[str, float]:
    """What Tune reserves for one trial's function trainable: `cpus` (trial_cpus) CPUs, and one GPU with
    ray.use_gpu; a multi-worker trial reserves only DRIVER_RESOURCES (its workers reserve theirs when its
    TorchTrainer starts them)."""
    if cfg.world_size > 1:
        return dict(DRIVER_RESOURCES)
    return {"cpu": cpus, **({"gpu": 1} if cfg.ray.use_gpu else {})}


def run_trial(choice: dict[str, Any], base: dict, tasks: list[str], data: dict, trials_root: str) -> None:
    """The function trainable (bound with tune.with_parameters)."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    out = trial_dir(trials_root, trial_id)
    raw = trial_config(base, tasks, choice, str(out))
    raw["model"]["data"].update(data)
    cfg = load_job_config(raw)
    if cfg.world_size > 1:
        _run_workers(cfg, base["search"], out, trial_id)
        return
    device = resolve_device("gpu") if cfg.ray.use_gpu else None  # the trial's GPU (Ray sets CUDA_VISIBLE_DEVICES)
    use_reserved_cpus()
    loop = build_loop(cfg, device=device)
    loop.run(_Reporter(cfg, loop.engine, SearchConfig.model_validate(base["search"]), out, tune.report))


def _run_workers(cfg: JobConfig, search: dict, out: Path, trial_id: str) -> None:
    """A multi-worker trial: a TorchTrainer (the train job's scaling settings) whose reports reach Tune."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from promptray.jobs.train import fit_trainer  # a worker's PromptrayError comes out as itself

    fit_trainer(torch_trainer(cfg, trial_worker_loop, {"search": search, "out": str(out)}, f"{cfg.name}-{trial_id}",
                              worker_resources(cfg, cfg.world_size), callbacks=[TuneReportCallback()]))


def trial_worker_loop(config: dict[str, Any]) -> None:
    """Ray Train's train_loop_per_worker of a multi-worker trial: the train job's worker set-up (build_loop:
    sharding, equal initial prompts), then the loop reporting at each validation on every worker (a
    barrier); rank 0 keeps the best prompts. Nothing is published and no checkpoint is written."""
    import ray

    from promptray.jobs.train_worker import report

    cfg, group, device = worker_start(config)
    out = Path(config["out"])
    if group.is_main:  # for release_placement_group, should the trial be stopped before its run ends
        out.mkdir(parents=True, exist_ok=True)
        (out / PLACEMENT_GROUP).write_text(ray.get_runtime_context().get_placement_group_id() or "")
    loop = build_loop(cfg, group, device, progress=False)
    loop.run(_Reporter(cfg, loop.engine, SearchConfig.model_validate(config["search"]), out,
                       lambda metrics: report(metrics, None, group), group))


def release_placement_group(out: Path) -> bool:
    """Remove the Train placement group of a multi-worker trial that Tune stopped (ASHA, time budget) if it
    is still there; True if it was. Stopping a trial ends its function trainable and with it the Train
    controller, so the controller never removes its workers' placement group; Ray's own cleaner actor
    needs the state API (a dashboard, one Ray instance per machine), which an embedded Ray does not have.
    A trial whose run ended normally has no placement group left: nothing to do."""
    import ray
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

    path = out / PLACEMENT_GROUP
    pg_hex = path.read_text().strip() if path.is_file() else ""
    if not pg_hex:
        return False
    pg = PlacementGroup(PlacementGroupID(bytes.fromhex(pg_hex)))
    if placement_group_table(pg).get("state") in (None, "REMOVED"):
        return False
    try:
        remove_placement_group(pg)
    except ray.exceptions.RaySystemError:  # removed in the meantime
        return False
    return True


class _Reporter:
    """The loop's per-step callback: at each validation, the objective to `send` (tune.report, or
    ray.train.report on every Train worker) and, on the main worker, the best prompts to disk."""

    def __init__(self, cfg: JobConfig, engine: Engine, search: SearchConfig, out: Path,
                 send: Callable[[dict[str, Any]], None], group: Dist = Dist()):
        self.cfg, self.engine, self.search, self.metric, self.out = cfg, engine, search, search.metric, out
        self.send, self.group = send, group
        self.best: Optional[float] = None
        self.objectives = None

    def __call__(self, info: StepInfo) -> None:
        rec = info.record
        if not rec or "val_loss" not in rec:
            return
        metrics = {"val_loss": rec["val_loss"], "step": info.step, "total_steps": info.total_steps,
                   "workers": self.group.world_size}
        if self.metric == "val_accuracy":
            metrics["val_accuracy"] = self._accuracy()
        value = metrics[self.metric]
        better = self.best is None or (value < self.best if self.metric == "val_loss" else value > self.best)
        if better:
            self.best = value
            if self.group.is_main:
                save_best(self.out, self.engine.model.bank.export(), self.cfg, self.engine)
        self.send(metrics)

    def _accuracy(self) -> float:
        """The mean over the trial's tasks of search_objective's val_accuracy (label ranking or greedy exact
        match on the fixed validation sample). Every worker computes it (the prompts are replicated, so the
        values agree; with model.sharding: fsdp each forward needs every worker)."""
        if self.objectives is None:
            self.objectives = self._objectives()
        values = [o() for o in self.objectives]
        return round(sum(values) / len(values), 5)

    def _objectives(self) -> list:
        e, d, s = self.engine, self.cfg.model.data, self.search
        trained = TaskEncoding(add_bos=d.add_bos, add_eos=d.add_eos)  # what this trial trains with
        ie = e.new_tasks_model(trained)
        url = self.cfg.storage.endpoint_url
        train, val = read_records(d.train_ds, endpoint_url=url), read_records(d.validation_ds, endpoint_url=url)
        sample = validation_sample(s, val)
        return [objective(s, self.cfg, ie, t, sample, task_labels(s, e.templates[t], train + val))
                for t in e.new_tasks]


def save_best(out: Path, prompts: dict[str, torch.Tensor], cfg: JobConfig, engine: Engine) -> None:
    """A trial's best prompts (taskname -> (n, H)) in `out`, with what publishing them needs of its model (the
    base model's fingerprint and the encoding, PUBLICATION): the search driver publishes without loading the
    base model, which a cluster's head node may not have the memory for."""
    out.mkdir(parents=True, exist_ok=True)
    made = {"base_model": engine.fingerprint.to_dict(), "encoding": training_encoding(cfg, engine.tokenizer).to_dict()}
    (out / PUBLICATION).write_text(json.dumps(made))
    torch.save(prompts, out / BEST_PROMPTS)


def read_publication(out: Path) -> Optional[tuple[BaseModelFingerprint, TaskEncoding]]:
    """The base model and encoding `save_best` recorded in `out`; None when it holds none (a trial of an
    earlier promptray)."""
    path = out / PUBLICATION
    if not path.is_file():
        return None
    made = json.loads(path.read_text())
    return BaseModelFingerprint.from_dict(made["base_model"]), TaskEncoding.from_dict(made["encoding"])

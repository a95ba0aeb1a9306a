"""`python -m promptray.jobs.search`: search virtual-token counts, splits, lr, init and style with Ray Tune.

    python -m promptray.jobs.search --config X.yaml [overrides ...] [--resume] [--plan] [--address ADDR] [--num-cpus N]

Each trial is a real training run of the engine (nothing published) that reports the objective (`search.metric`) at
every validation; ASHA stops bad trials early. A trial runs as many workers as the train job would (ray.num_workers,
else trainer.devices x num_nodes): one worker inside the trial's function trainable (`search.cpus_per_trial` CPUs;
default its share of the cluster's), several as a Ray Train V2 `TorchTrainer` started by the function trainable
(which then reserves no CPU) with `TuneReportCallback` (see search_trial.py); when Tune stops such a trial, the
driver frees its workers' placement group. Prompt-tuning tasks are searched independently (one Tuner per task),
p-tuning tasks jointly (they share the encoder). At the end only the best trial's prompts are published, with
provenance (search id, trial config, metric) in the table's source/metrics.

Run dir (exp_manager): trials.csv, trials.json, search_plot.png (metric vs virtual-token count per task),
trials/<trial id>/ (each trial's metrics), tune/<group>/ (Ray Tune's results; a rerun with the same run dir
resumes it with Tuner.restore, e.g. after a driver crash). Stdout: `PROMPTRAY_RESULT {...}` once at the end.
Exit codes: 0 success; 2 invalid input; 1 the search failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from promptray.jobs.cli_common import MissingDependencyError, parse_anywhere, require_ray
from promptray.jobs.config import JobConfig, load_job_config
from promptray.jobs.faults import FAULTS_ENV, faults_from_env
from promptray.jobs.search_config import NO_SEARCH
from promptray.jobs.search_pack import run_pack
from promptray.jobs.search_plan import Plan, plan_search
from promptray.jobs.search_report import (
    SearchFailed,
    best_row,
    errored,
    finalists,
    pack_rows,
    plot_curves,
    plot_trials,
    publish_best,
    trial_rows,
    write_tables,
)
from promptray.jobs.search_space import param_space, search_groups, split_data
from promptray.jobs.search_trial import release_placement_group, run_trial, trial_cpus, trial_dir, trial_resources
from promptray.jobs.train import RESULT_PREFIX, absolutize, connect
from promptray.jobs.trainer_factory import cluster_cpus, cpu_share
from promptray.platform.errors import ConfigError, PromptrayError
from promptray.platform.model.limits import check_model_limits_on_driver

log = logging.getLogger(__name__)
CRASH_MARKER = ".promptray_search_crashed"


class SearchInterrupted(PromptrayError):
    """Testing (stop_after_trials in PROMPTRAY_TEST_FAULTS, jobs/faults.py): the driver stopped as if it had crashed;
    rerun to resume."""


def search_id_for(run_dir: Path, cfg: JobConfig) -> str:
    """The search's id, kept in run_dir/search.json with the search's settings so a resumed search keeps it.
    A run dir holds one search: a rerun whose settings differ from the recorded ones is a ConfigError naming
    the changed keys (it would otherwise resume the old search and publish its result again)."""
    path, settings = run_dir / "search.json", _what_it_searches(cfg.model_dump(mode="json"))
    if path.is_file():
        saved = json.loads(path.read_text())
        changed = _changed_keys(_what_it_searches(saved["settings"]), settings) if "settings" in saved else []
        if changed:
            more = f" and {len(changed) - 6} more" if len(changed) > 6 else ""
            raise ConfigError(f"{run_dir} holds search {saved['search_id']}, run with other settings (changed: "
                              f"{', '.join(changed[:6])}{more}); a run dir resumes only the same search: give this "
                              f"one another `name` or `exp_manager.exp_dir`, or delete {run_dir} to start over")
        return saved["search_id"]
    sid = f"{cfg.name}-search-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"search_id": sid, "settings": settings}))
    return sid


def _what_it_searches(settings: dict[str, Any]) -> dict[str, Any]:
    """What makes a search the same search: its settings but where and how it runs (`ray`,
    `search.cpus_per_trial`)."""
    kept = {k: v for k, v in settings.items() if k != "ray"}
    kept["search"] = {k: v for k, v in (kept.get("search") or {}).items() if k != "cpus_per_trial"}
    return kept


def _changed_keys(old: Any, new: Any, where: str = "") -> list[str]:
    """Dotted keys whose values differ between two JSON-like configs."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [k for key in sorted(set(old) | set(new), key=str)
                for k in _changed_keys(old.get(key), new.get(key), f"{where}.{key}" if where else str(key))]
    return [] if old == new else [where or "(root)"]


def _crash_callback(run_dir: Path, after: int):
    from ray.tune import Callback

    class StopAfter(Callback):
        """Raises once `after` trials completed in this driver (only once per run dir)."""

        def __init__(self):
            self.done = 0

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.done += 1  # Tune catches errors raised here; the next step of the driver loop raises

        def on_step_begin(self, iteration, trials, **info):
            marker = run_dir / CRASH_MARKER
            if self.done >= after and not marker.exists():
                marker.write_text(str(self.done))
                raise SearchInterrupted(f"{FAULTS_ENV}: stop_after_trials: stopped after {self.done} trial(s)")

    return StopAfter()


def _release_callback(trials_root: Path):
    from ray.tune import Callback

    class ReleaseStopped(Callback):
        """Frees the Train workers' resources of a multi-worker trial that Tune stopped (see
        search_trial.release_placement_group), so that the next trials can start."""

        def on_trial_complete(self, iteration, trials, trial, **info):
            if release_placement_group(trial_dir(str(trials_root), trial.trial_id)):
                log.info("trial %s stopped: released its Train workers' placement group", trial.trial_id)

        on_trial_error = on_trial_complete

    return ReleaseStopped()


def _space(cfg: JobConfig, tasks: list[str]) -> tuple[dict, Any, int]:
    """(param space, scheduler, samples): a budget search runs one packed trial per bracket (the successive
    halving is inside each pack, so Tune runs them first-in first-out); otherwise a trial per sample of the
    space, stopped early by ASHA."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    s = cfg.search
    if s.budget_steps is not None:
        brackets = len(plan_search(s, tasks[0], s.seed).brackets)
        return {"bracket": tune.grid_search(list(range(brackets)))}, FIFOScheduler(), 1
    asha = ASHAScheduler(max_t=10_000, grace_period=s.grace_period, reduction_factor=s.reduction_factor)
    return param_space(s, tasks, cfg.model.virtual_prompt_style), asha, s.num_samples


def build_tuner(cfg: JobConfig, group: str, tasks: list[str], data: dict, resume: bool, cpus: float):
    """The Ray Tune Tuner of one search group (tasks searched together), each one-worker trial reserving `cpus`
    CPUs: restored from run_dir/tune/<group> when it exists, else a new one with ASHA and the group's param
    space. ConfigError when `resume` is asked and there is nothing to resume."""
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    s, run_dir = cfg.search, cfg.run_dir
    base = cfg.model_dump(mode="json")
    fn = run_pack if s.budget_steps is not None else run_trial
    trainable = tune.with_resources(
        tune.with_parameters(fn, base=base, tasks=tasks, data=data, trials_root=str(run_dir / "trials")),
        trial_resources(cfg, cpus))
    path = run_dir / "tune" / group
    if tune.Tuner.can_restore(str(path)):
        log.info("resuming the search group %s from %s", group, path)
        return tune.Tuner.restore(str(path), trainable, resume_errored=True)
    if resume:
        raise ConfigError(f"--resume: no search to resume at {path}; run without --resume to start one")
    callbacks = [_release_callback(run_dir / "trials")]
    stop_after = faults_from_env().stop_after_trials
    callbacks += [_crash_callback(run_dir, stop_after)] if stop_after else []
    space, scheduler, samples = _space(cfg, tasks)
    return tune.Tuner(
        trainable, param_space=space,
        tune_config=tune.TuneConfig(metric=s.metric, mode=s.metric_mode, scheduler=scheduler,
                                    search_alg=BasicVariantGenerator(random_state=s.seed,
                                                                     max_concurrent=s.max_concurrent_trials),
                                    num_samples=samples,
                                    time_budget_s=s.time_budget_s),
        run_config=tune.RunConfig(name=group, storage_path=str(run_dir / "tune"), callbacks=callbacks,
                                  verbose=0))


def _fit(tuner):
    from ray.tune.error import TuneError

    try:
        return tuner.fit()
    except TuneError as e:
        cause = e.__cause__
        raise cause if isinstance(cause, PromptrayError) else SearchFailed(f"the search failed: {e}") from None


def run_search(cfg: JobConfig, resume: bool = False) -> dict[str, Any]:
    """Every search group on the connected Ray, then the summary files and the publication of the best."""
    s, run_dir = cfg.search, cfg.run_dir
    search_id = search_id_for(run_dir, cfg)
    groups = search_groups(cfg)
    rows, plans = [], budget_plans(cfg)
    cfg, cpus = _with_resources(cfg)
    for group, plan in plans.items():
        log.info("search plan of %s (search.budget_steps %d):\n%s", group, s.budget_steps, plan.describe())
    for group, tasks in groups.items():
        data = split_data(cfg, tasks, run_dir / "data") if len(groups) > 1 else {}
        grid = _fit(build_tuner(cfg, group, tasks, data, resume, cpus))
        rows += (pack_rows(grid, group, s.metric, run_dir / "trials") if s.budget_steps is not None
                 else trial_rows(grid, group, tasks, s.metric, s.metric_mode))
    csv_path, _ = write_tables(run_dir, rows)  # also when a group failed: its trials' errors are in there
    if errored(rows):
        log.warning("%d of %d trial(s) erred; their errors are in %s", errored(rows), len(rows), csv_path)
    plotter = plot_curves if s.budget_steps is not None else plot_trials
    plot = plotter(run_dir, rows, list(cfg.model.new_tasks), s.metric)
    pool = finalists(rows) if s.budget_steps is not None else rows  # a budget search: the packs' survivors
    best = {g: (tasks, best_row(pool, g, s.metric, s.metric_mode)) for g, tasks in groups.items()}
    versions = publish_best(cfg, best, search_id, run_dir / "trials")
    return {"search_id": search_id, "table": cfg.table_uri, "versions": versions, "metric": s.metric,
            "best": {g: {"trial_id": r["trial_id"], s.metric: r[s.metric],
                         "config": {k.removeprefix("config/"): v for k, v in r.items() if k.startswith("config/")}}
                     for g, (_, r) in best.items()},
            "trials": len(rows), "trials_errored": errored(rows), "run_dir": str(run_dir),
            **({"cpus_per_trial": cpus} if cfg.world_size == 1 else {}),
            **({"plan": {g: p.summary() for g, p in plans.items()}} if plans else {}),
            "optimizer_steps": sum(int(r.get("last_step") or 0) for r in rows),
            "trials_csv": str(csv_path), "plot": str(plot),
            "tune_dir": str(run_dir / "tune")}


def _with_resources(cfg: JobConfig) -> tuple[JobConfig, float]:
    """(cfg, the CPUs a one-worker trial reserves) on the connected Ray, decided once when the search starts:
    `trial_cpus` for one-worker trials; for multi-worker trials, unless ray.resources_per_worker is set, each
    worker's `cpu_share` with max_concurrent_trials x workers processes at once, written into the config the
    trials get."""
    nodes, available = cluster_cpus()
    s, r = cfg.search, cfg.ray
    if cfg.world_size == 1:
        cpus = trial_cpus(s, nodes, available)
        log.info("each trial reserves %g CPU(s) (search.cpus_per_trial: %s)", cpus, s.cpus_per_trial or "auto")
        return cfg, cpus
    if r.resources_per_worker is None:
        share = {"CPU": cpu_share(s.max_concurrent_trials * cfg.world_size, nodes, available)}
        cfg = cfg.model_copy(update={"ray": r.model_copy(update={"resources_per_worker": share})})
    log.info("each trial's %d workers reserve %s each", cfg.world_size, cfg.ray.resources_per_worker)
    return cfg, 0.0


def budget_plans(cfg: JobConfig) -> dict[str, Plan]:
    """Each search group's plan (search_plan.py) of a budget search; {} without search.budget_steps."""
    s = cfg.search
    if s is None or s.budget_steps is None:
        return {}
    return {group: plan_search(s, tasks[0], s.seed) for group, tasks in search_groups(cfg).items()}


def prepare_search_config(path_or_dict, overrides: Optional[list[str]] = None) -> JobConfig:
    """The checked config of a search: schema, cross-key, data files, then every template and candidate
    token count against the base model's limits (its config only), all before any trial runs."""
    cfg = absolutize(load_job_config(path_or_dict, overrides, check_files=True))
    if cfg.search is None:
        raise ConfigError(NO_SEARCH)
    check_model_limits_on_driver(cfg)
    return cfg


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `python -m promptray.jobs.search`."""
    p = argparse.ArgumentParser(prog="python -m promptray.jobs.search",
                                description="Search prompt-learning settings per task with Ray Tune.")
    p.add_argument("--config", required=True, help="YAML config with a `search:` section")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. search.num_samples=4 (before or after the "
                   "flags)")
    p.add_argument("--resume", action="store_true", help="require an interrupted search in the run dir "
                   "(it is resumed automatically when present)")
    p.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else an embedded local Ray)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the embedded local Ray (default: this machine's)")
    p.add_argument("--plan", action="store_true", help="print a budget search's plan (per bracket: candidates, "
                   "rungs, optimizer steps, the published candidate's steps) and exit without starting Ray")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    return p


def main(argv: Optional[list[str]] = None, echo: Callable[[str], None] = print) -> int:
    """Run a search from the command line; print the PROMPTRAY_RESULT line. Exit status 0; 2 for a config
    problem or a missing `ray` extra; 1 when the search failed; 130 when interrupted."""
    args = parse_anywhere(build_parser(), argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = prepare_search_config(args.config, args.overrides)
        if args.plan:
            return _print_plans(cfg, echo)
        require_ray("a search needs Ray Tune")
        connect(args.address, cfg, args.num_cpus)
        payload = run_search(cfg, resume=args.resume)
    except PromptrayError as e:
        print(f"promptray.jobs.search: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, (ConfigError, MissingDependencyError)) else 1
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    echo(RESULT_PREFIX + json.dumps(payload, default=str))
    return 0


def _print_plans(cfg: JobConfig, echo: Callable[[str], None]) -> int:
    plans = budget_plans(cfg)
    if not plans:
        raise ConfigError("--plan: search.budget_steps is not set; only a budget search is planned ahead (an ASHA "
                          "search stops trials as their values come in)")
    for group, plan in plans.items():
        echo(f"{group} (search.budget_steps {cfg.search.budget_steps}):\n{plan.describe()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

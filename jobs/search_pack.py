"""A packed trial of a budget search: one Tune trial trains one bracket's candidates together (platform's
`PackLoop`: one model load, one data read, each candidate its own prompt, optimizer group and schedule) and
cuts them by successive halving at the bracket's rungs (search_plan.py).

Why the cut is made inside the pack: Tune's schedulers stop whole trials, and a trial is the unit that owns a
process and a loaded model; a candidate is a prompt inside it. So Ray Tune drives the search (a trial per
bracket, placed on the cluster's workers and nodes with its resources, concurrency, time budget, resume and
error handling) and its scheduler sees each pack's best value at every report, while each report also carries
every candidate's own value, steps and state (`cand/<i>/...`), and the successive-halving rule applied at the
rungs is the same rule Tune's `ASHAScheduler` applies to trials (keep the best 1/eta at each rung, by the
value each reports there). A candidate's value is its latest validation's (`PackLoop(keep="last")`), and its
kept prompt the one validated then: what is published is the survivor at the end of its schedule, not an
earlier checkpoint that read higher once on the noisy validation sample.

The pack's run dir (trials/<trial id>/) holds candidates.json (each candidate's choice, curve, steps, state,
best value; rewritten at every report, so a pack that Tune stops still has it) and best_prompts.pt (the best
candidate's prompt under the task's name, what publishing reads).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from promptray.jobs.config import JobConfig, load_job_config
from promptray.jobs.search_config import SearchConfig
from promptray.jobs.search_objective import objective, task_labels, validation_sample
from promptray.jobs.search_plan import Bracket, plan_search
from promptray.jobs.search_report import error_line
from promptray.jobs.search_space import trial_config
from promptray.jobs.search_trial import CANDIDATES, save_best, trial_dir
from promptray.jobs.trainer_factory import use_reserved_cpus
from promptray.platform.model.devices import resolve_device
from promptray.platform.train.pack import PackLoop, candidate_records
from promptray.platform.train.trainer import prepare_engine


def candidate_configs(base: dict, task: str, bracket: Bracket, data: dict, out: Path) -> dict[str, JobConfig]:
    """Each candidate's full config (its choice applied, trained for the bracket's full length), by name."""
    cfgs = {}
    for i, choice in enumerate(bracket.candidates):
        raw = trial_config(base, [task], choice, str(out / f"c{i}"))
        raw["model"]["data"].update(data)
        raw["trainer"]["max_steps"] = bracket.max_steps
        cfgs[f"{task}.c{i}"] = load_job_config(raw)
    return cfgs


def run_pack(choice: dict[str, Any], base: dict, tasks: list[str], data: dict, trials_root: str) -> None:
    """The function trainable of a budget search (bound with tune.with_parameters); `choice` = {"bracket": b}."""
    from ray import tune

    s, task = SearchConfig.model_validate(base["search"]), tasks[0]
    bracket = plan_search(s, task, s.seed).brackets[int(choice["bracket"])]
    out = trial_dir(trials_root, tune.get_context().get_trial_id())
    cfgs = candidate_configs(base, task, bracket, data, out)
    first = next(iter(cfgs.values()))
    device = resolve_device("gpu") if first.ray.use_gpu else None
    cpus = use_reserved_cpus()
    engine = prepare_engine(first)
    if device is not None:
        engine.model.to(device)
    pack = PackLoop(engine, task, cfgs, metric=s.metric, mode=s.metric_mode, device=device,
                    shared_forward=s.shared_forward, keep="last",  # rungs compare values at the rung
                    streams=candidate_streams(s, cpus, device))
    try:
        PackRun(pack, s, bracket, dict(zip(cfgs, bracket.candidates)), out, tune.report).run()
    finally:
        pack.close()


def candidate_streams(s: SearchConfig, cpus: int, device) -> int:
    """How many candidates a pack trains and validates at once (search.parallel_candidates; unset: 2 on a CPU
    trial of 2+ CPUs, each on half of them, else 1: one at a time on an accelerator or with shared_forward)."""
    if s.parallel_candidates is not None:
        return s.parallel_candidates
    return 2 if device is None and cpus >= 2 and not s.shared_forward else 1


class PackRun:
    """Runs a pack through its bracket: validations at every rung (and every trainer.val_check_interval steps
    when that is a step count), a cut at each rung, a report to Tune after each round of validations."""

    def __init__(self, pack: PackLoop, s: SearchConfig, bracket: Bracket, choices: dict[str, dict], out: Path,
                 send):
        self.pack, self.s, self.bracket, self.out, self.send = pack, s, bracket, out, send
        self.choices = choices  # candidate name -> its choice, failed candidates included
        every = next(iter(pack.candidates.values())).cfg.trainer.val_check_interval
        self.every = every if isinstance(every, int) else None
        self.objectives = self._objectives() if s.metric == "val_accuracy" else {}
        self.best: Optional[str] = None

    def _objectives(self) -> dict:
        p = self.pack
        train, val = p.records
        template = p.engine.templates[p.task]
        labels = task_labels(self.s, template, train + val)
        sample = validation_sample(self.s, val)
        return {n: objective(self.s, c.cfg, p.prompt_model(n), n, candidate_records(sample, p.task, n), labels)
                for n, c in p.candidates.items()}

    def run(self) -> None:
        rungs = dict(zip(self.bracket.steps, self.bracket.keep))
        for step in range(1, self.bracket.max_steps + 1):
            if not self.pack.running:
                break
            trained = self.pack.running
            self.pack.step()
            if step in rungs or (self.every and step % self.every == 0):
                self.pack.validate_all({name: self.objectives.get(name) for name in trained})
                if step in rungs:
                    self._cut(rungs[step])
                self._report(step)

    def _cut(self, keep: int) -> None:
        """Successive halving: the `keep` running candidates with the best values at this rung go on."""
        running = self.pack.running
        reverse = self.s.metric_mode == "max"
        ranked = sorted(running, key=lambda n: self.pack.candidates[n].best, reverse=reverse)
        for name in ranked[keep:]:
            self.pack.stop(name)

    def _report(self, step: int) -> None:
        p, metric = self.pack, self.s.metric
        scored = [n for n, c in p.candidates.items() if c.best is not None]
        survivors = [n for n in scored if p.candidates[n].state != "stopped"]
        scored = survivors or scored  # the pack's best is its best surviving candidate (see `table`)
        pick = min if self.s.metric_mode == "min" else max
        best = pick(scored, key=lambda n: p.candidates[n].best)
        if best != self.best or p.candidates[best].best_step == p.candidates[best].done:
            save_best(self.out, {p.task: p.prompts(best)}, p.candidates[best].cfg, p.engine)
            self.best = best
        (self.out / CANDIDATES).write_text(json.dumps(self.table(), indent=1))
        metrics = {metric: p.candidates[best].best, "step": step, "total_steps": self.bracket.max_steps,
                   "candidate_steps": p.candidate_steps, "running": len(p.running), "best_candidate": best,
                   "workers": 1}
        for name, c in p.candidates.items():
            i = name.rsplit(".c", 1)[-1]  # the candidate's index in its bracket
            metrics[f"cand/{i}/{metric}"] = c.best
            metrics[f"cand/{i}/steps"] = c.done
        self.send(metrics)

    def table(self) -> list[dict[str, Any]]:
        """One entry per candidate: name, choice, state, steps, best value and step, curve, whether it is the
        pack's best, and for a candidate whose data failed its error (state "error").

        The pack's best (what the search publishes) is the best of the candidates not cut by a rung: the
        last rung's survivors at the end (successive halving's result; with train_best the one that trained
        to the end of the budget). A cut candidate's value was measured after fewer steps on a noisy sample;
        letting it override the later rungs would publish the luckiest early reading (a winner's curse)
        and waste the steps given to the survivors."""
        rows = [{"candidate": n, "choice": self.choices[n], "state": c.state, "steps": c.done,
                 "best": c.best, "best_step": c.best_step, "is_best": n == self.best, "curve": c.curve}
                for n, c in self.pack.candidates.items()]
        return rows + [{"candidate": n, "choice": self.choices[n], "state": "error", "steps": 0, "best": None,
                        "best_step": None, "is_best": False, "curve": [], "error": error_line(e)}
                       for n, e in self.pack.failed.items()]

"""Search groups, Ray Tune parameter spaces, and trial configs (a base config + one trial's choices).

Tasks are searched independently (one group, one Tuner per task) with prompt tuning, jointly (one group)
when a candidate style is p-tuning, whose encoder the tasks share. Token counts are a grid (every candidate
count is tried num_samples times); the other dimensions are sampled.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from promptray.jobs.config import JobConfig
from promptray.jobs.search_config import SearchConfig, apportion, marker_count
from promptray.platform.data.dataset import read_records


def search_groups(cfg: JobConfig) -> dict[str, list[str]]:
    """Group name -> its tasks: one group per task, or one 'joint' group."""
    m, s = cfg.model, cfg.search
    if s.joint(m.virtual_prompt_style) or len(m.new_tasks) == 1:
        return {"joint" if len(m.new_tasks) > 1 else m.new_tasks[0]: list(m.new_tasks)}
    return {t: [t] for t in m.new_tasks}


def param_space(s: SearchConfig, tasks: list[str], default_style: str) -> dict[str, Any]:
    """Ray Tune's param space of `tasks`: a grid over each task's token counts, choices of splits, init methods
    and styles, log-uniform learning rates (per task, or one shared)."""
    from ray import tune

    space: dict[str, Any] = {}
    for t in tasks:
        sp = s.tasks[t]
        space[f"{t}.total_virtual_tokens"] = tune.grid_search(sp.counts)
        if sp.splits and len(sp.splits) > 1:
            space[f"{t}.split"] = tune.choice(list(range(len(sp.splits))))
        if sp.lr is not None:
            space[f"{t}.lr"] = tune.loguniform(sp.lr.min, sp.lr.max)
        if sp.init:
            space[f"{t}.init"] = tune.choice(list(sp.init))
    if s.lr is not None:
        space["lr"] = tune.loguniform(s.lr.min, s.lr.max)
    styles = s.styles(default_style)
    if len(styles) > 1:
        space["style"] = tune.choice(styles)
    return space


def trial_config(base: dict, tasks: list[str], choice: dict[str, Any], trial_dir: str) -> dict:
    """The full config dict of one trial: the base (absolute paths) with this trial's choices applied, its
    run dir (exp_manager.explicit_log_dir) in the search's trials/ folder."""
    raw = copy.deepcopy(base)
    s = SearchConfig.model_validate(raw.pop("search"))
    m = raw["model"]
    style = choice.get("style", (s.style or [m["virtual_prompt_style"]])[0])
    m["virtual_prompt_style"], m["seed"] = style, s.seed
    _apply_lr(m["optim"], choice.get("lr", choice.get(f"{tasks[0]}.lr")))
    for t in m["task_templates"]:
        if t["taskname"] in tasks:
            _apply_tokens(t, s, choice)
    _apply_init(m, s, tasks, choice)
    m["new_tasks"] = list(tasks)
    raw["exp_manager"] = {**raw.get("exp_manager", {}), "explicit_log_dir": trial_dir}
    return raw  # the ray section stays: a trial runs as many workers as the train job would


def _apply_lr(optim: dict, lr: Any) -> None:
    """A searched learning rate scales the whole schedule: model.optim.lr becomes `lr` (None: unchanged) and
    sched.min_lr keeps its ratio to it. A fixed min_lr under a searched peak would change the schedule's
    shape with the lr (a candidate near min_lr would train at a nearly constant rate, one below it would
    be a config error), so lr would be confounded with the decay."""
    base = optim["lr"]
    if lr is None or not base:
        return
    optim["lr"] = lr
    sched = optim.get("sched")
    if sched and sched.get("min_lr"):
        sched["min_lr"] = sched["min_lr"] * lr / base


def _apply_tokens(template: dict, s: SearchConfig, choice: dict[str, Any]) -> None:
    name = template["taskname"]
    total = int(choice[f"{name}.total_virtual_tokens"])
    splits = s.tasks[name].splits
    shares = splits[int(choice.get(f"{name}.split", 0))] if splits else [1.0] * max(1, marker_count(template))
    template["total_virtual_tokens"], template["virtual_token_splits"] = total, apportion(total, shares)


def _apply_init(m: dict, s: SearchConfig, tasks: list[str], choice: dict[str, Any]) -> None:
    pt = m.setdefault("prompt_tuning", {})
    old_methods, old_texts = pt.get("new_prompt_init_methods") or [], pt.get("new_prompt_init_text") or []
    methods, texts = [], []
    for t in tasks:
        i = m["new_tasks"].index(t)
        methods.append(choice.get(f"{t}.init", old_methods[i] if i < len(old_methods) else "random"))
        texts.append(s.tasks[t].init_text or (old_texts[i] if i < len(old_texts) else None))
    pt["new_prompt_init_methods"], pt["new_prompt_init_text"] = methods, texts


def split_data(cfg: JobConfig, tasks: list[str], out: Path) -> dict[str, list[str]]:
    """Train / validation files holding only `tasks`' records (a group trains its own tasks only)."""
    d, files = cfg.model.data, {}
    out.mkdir(parents=True, exist_ok=True)
    for key, sources in (("train_ds", d.train_ds), ("validation_ds", d.validation_ds or [])):
        records = read_records(sources, endpoint_url=cfg.storage.endpoint_url)
        rows = [r.data for r in records if r.data.get("taskname") in tasks]
        path = out / f"{'-'.join(tasks)}.{key}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        files[key] = [str(path)]
    return files

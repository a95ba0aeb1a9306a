"""Budget plans: rungs that fit search.budget_steps with a grace share for large prompts, learning rates
stratified per count, brackets, and budget problems reported with the rest of the config."""

from __future__ import annotations

import math

import pytest
import yaml
from test_search import search_config

from promptray.jobs.config import load_job_config
from promptray.jobs.search import main
from promptray.jobs.search_config import SearchConfig
from promptray.jobs.search_plan import PlanError, candidates, plan_bracket, plan_search
from promptray.platform.errors import ConfigError


def space(**kw) -> SearchConfig:
    return SearchConfig.model_validate({"tasks": {"a": {"total_virtual_tokens": [5, 20, 50, 100],
                                                        "init": ["text", "random"]}},
                                        "lr": {"min": 3e-3, "max": 1e-1}, "num_samples": 2, "budget_steps": 400,
                                        **kw})


def test_a_bracket_fits_the_budget_and_gives_every_candidate_a_quarter_of_the_length_first():
    plan = plan_search(space(), "a", seed=0)
    (b,) = plan.brackets
    assert len(b.candidates) == 8
    assert b.steps == [25, 50, 100] and b.keep == [4, 2, 2]  # 8 -> 4 -> 2 finish; the first rung is 100/4
    assert b.cost == plan.cost == 8 * 25 + 4 * 25 + 2 * 50 == 400
    best = plan_search(space(train_best=True), "a", seed=0).brackets[0]
    assert best.steps == [20, 40, 80, 160] and best.keep == [4, 2, 1, 1]  # the best alone trains on to 160
    assert best.cost == 8 * 20 + 4 * 20 + 2 * 40 + 1 * 80 == 400
    wide = plan_search(space(reduction_factor=3, grace_fraction=0.2), "a", seed=0).brackets[0]
    assert wide.keep == [2, 2] and wide.steps == [33, 100]  # one cut: a second (1/9) would go below a fifth
    assert wide.cost == 8 * 33 + 2 * 67 == 398  # 101 steps would cost 406
    assert plan_bracket(wide.candidates, 7, 3, 0.2) is None  # not even one step each


def test_learning_rates_are_stratified_per_count_and_over_all_candidates_and_inits_cycle():
    s = space(num_samples=4)
    pool = candidates(s, "a", seed=3)
    assert pool == candidates(s, "a", seed=3) and pool != candidates(s, "a", seed=4)
    for count in (5, 20, 50, 100):
        mine = [c for c in pool if c["a.total_virtual_tokens"] == count]
        where = sorted((math.log(c["lr"]) - math.log(3e-3)) / (math.log(1e-1) - math.log(3e-3)) for c in mine)
        assert [int(u * 4) for u in where] == [0, 1, 2, 3]  # one learning rate in each quarter of the log range
        assert sorted(c["a.init"] for c in mine) == ["random", "random", "text", "text"]
    eighths = sorted(int(8 * (math.log(c["lr"]) - math.log(3e-3)) / (math.log(1e-1) - math.log(3e-3)))
                     for c in candidates(space(), "a", seed=0))
    assert eighths == list(range(8))  # 4 counts x 2 samples: one learning rate in each eighth of the range


def test_brackets_split_the_candidates_and_the_budget_later_ones_cut_less():
    plan = plan_search(space(brackets=2), "a", seed=0)
    first, second = plan.brackets
    assert len(first.candidates) == len(second.candidates) == 4
    assert len(first.keep) == 3 and len(second.keep) == 2  # bracket 1 allows one cut fewer
    assert first.cost <= 200 and second.cost <= 200


def test_budget_problems_come_with_the_rest_of_the_config(tmp_path):
    raw = search_config(tmp_path, tmp_path / "no-model", [2, 4], budget_steps=3, num_samples=2, val_samples=0,
                        val_batch_size=0, parallel_candidates=0, style=["p-tuning"])
    raw["ray"] = {"num_workers": 2}
    raw["model"]["micro_batch_size"] = 2
    raw["search"]["tasks"]["a"]["labels"] = ["x"]
    with pytest.raises(ConfigError) as e:
        load_job_config(raw)
    problems = e.value.problems
    assert "search.val_samples: got 0; use a value >= 1" in problems
    assert "search.val_batch_size: got 0; use a value >= 1" in problems
    assert "search.parallel_candidates: got 0; use a value >= 1" in problems
    assert "search.tasks.a.labels: ['x'] has fewer than 2 labels; give the task's answers or drop it" in problems
    assert any(p.startswith("search.budget_steps: packed candidates are prompt-tuning prompts") for p in problems)
    assert any(p.startswith("search.budget_steps: a pack trains in one worker, but the job runs 2") for p in problems)
    assert ("search.budget_steps: 3 cannot train the 4 candidate(s) of task 'a' in 1 bracket(s) to a first rung; "
            "give at least 4 steps, or fewer counts / num_samples / brackets") in problems
    assert len(problems) == 7


def test_the_plan_says_rungs_cost_and_the_published_candidates_steps():
    plan = plan_search(space(train_best=True), "a", seed=0)
    assert plan.summary() == [{"candidates": 8, "rungs": [{"steps": 20, "keep": 4}, {"steps": 40, "keep": 2},
                                                          {"steps": 80, "keep": 1}, {"steps": 160, "keep": 1}],
                               "optimizer_steps": 400, "published_steps": 160}]
    lines = plan.describe().splitlines()
    assert lines[0] == ("bracket 0: 8 candidates, rungs at 20 / 40 / 80 / 160 steps keeping 4 / 2 / 1 / 1; "
                        "400 optimizer steps, the published candidate trains 160")
    pool = candidates(space(train_best=True), "a", seed=0)
    assert lines[1:] == [f"  c{i}: total_virtual_tokens {c['a.total_virtual_tokens']}, lr {c['lr']:.3g}, "
                         f"init {c['a.init']}" for i, c in enumerate(pool)]  # what each candidate tries


def test_the_plan_flag_prints_the_plan_and_starts_nothing(tmp_path, tiny_gpt2_path, capsys):
    raw = search_config(tmp_path, tiny_gpt2_path, [2, 4], budget_steps=16, num_samples=2, train_best=True)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    lines: list[str] = []
    assert main(["--config", str(path), "--plan"], echo=lines.append) == 0
    assert lines == ["a (search.budget_steps 16):\nbracket 0: 4 candidates, rungs at 2 / 4 / 8 steps keeping "
                     "2 / 1 / 1; 16 optimizer steps, the published candidate trains 8\n"
                     + "\n".join(f"  c{i}: total_virtual_tokens {n}" for i, n in enumerate([2, 2, 4, 4]))]
    assert not (tmp_path / "runs").exists()  # nothing ran
    del raw["search"]["budget_steps"]
    path.write_text(yaml.safe_dump(raw))
    assert main(["--config", str(path), "--plan"], echo=lines.append) == 2
    assert "--plan: search.budget_steps is not set" in capsys.readouterr().err


def test_a_run_dir_resumes_only_the_same_search(tmp_path):
    from promptray.jobs.search import search_id_for

    raw = search_config(tmp_path, tmp_path / "no-model", [2, 4], budget_steps=16)
    cfg = load_job_config(raw)
    sid = search_id_for(cfg.run_dir, cfg)
    raw["ray"] = {"resources_per_worker": {"CPU": 2}}  # how it runs is not what it is
    raw["search"]["cpus_per_trial"] = 2
    assert search_id_for(cfg.run_dir, load_job_config(raw)) == sid
    raw["search"]["label_ranking"], raw["search"]["budget_steps"] = False, 24
    with pytest.raises(ConfigError) as e:
        search_id_for(cfg.run_dir, load_job_config(raw))
    assert e.value.problems[0].startswith(f"{cfg.run_dir} holds search {sid}, run with other settings (changed: "
                                   "search.budget_steps, search.label_ranking); a run dir resumes only the same "
                                   "search: give this one another `name` or `exp_manager.exp_dir`")


def test_the_least_budget_named_is_the_least_that_plans_and_brackets_need_candidates():
    for extra, least in (({}, 8), ({"train_best": True}, 9), ({"brackets": 2}, 8)):
        with pytest.raises(PlanError) as e:
            plan_search(space(budget_steps=least - 1, **extra), "a", seed=0)
        assert f"give at least {least} steps" in str(e.value)
        assert plan_search(space(budget_steps=least, **extra), "a", seed=0).cost <= least
    with pytest.raises(PlanError) as e:
        plan_search(space(brackets=9), "a", seed=0)
    assert str(e.value) == ("search.brackets: 9 brackets for the 8 candidate(s) of task 'a' (counts x num_samples); "
                            "give at most 8, each bracket takes its share of them")


def test_a_pack_runs_two_candidates_at_once_on_a_cpu_trial_of_two_or_more_cpus():
    from promptray.jobs.search_pack import candidate_streams

    s = space()
    assert [candidate_streams(s, cpus, None) for cpus in (1, 2, 16)] == [1, 2, 2]
    assert candidate_streams(s, 8, "cuda") == 1  # an accelerator: one at a time
    assert candidate_streams(space(shared_forward=True), 8, None) == 1  # one mixed forward already
    assert candidate_streams(space(parallel_candidates=3), 1, "cuda") == 3  # as configured

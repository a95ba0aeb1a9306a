"""The Ray Tune search (`python -m promptray.jobs.search`): finds the known-best token count, publishes only the
best trial with provenance, ASHA stops bad trials, invalid spaces fail before any trial, a crashed search
resumes. Tiny random-weight models, a few steps; the Ray tests share the session's local Ray."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
import torch
import yaml

from promptray.jobs.config import load_job_config
from promptray.jobs.faults import FAULTS_ENV
from promptray.jobs.search import (
    SearchInterrupted,
    main,
    prepare_search_config,
    run_search,
)
from promptray.jobs.search_config import apportion
from promptray.platform.errors import ConfigError
from promptray.platform.table.table import PromptTable

WORDS = "apple river stone cloud green tiger music paper candle window garden silver".split()


def search_config(tmp_path: Path, model: Path, counts: list[int], **search) -> dict:
    """Task 'a': random words -> a random 3-word label (memorising it needs capacity: more tokens help).
    6 steps, validation every step; the search space's other keys are merged in from `search`."""
    rng = random.Random(0)
    rows = [{"taskname": "a", "text": " ".join(rng.sample(WORDS, 3)), "label": " ".join(rng.sample(WORDS, 3))}
            for _ in range(16)]
    data = tmp_path / "a.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    template = {"taskname": "a", "prompt_template": "<|VIRTUAL_PROMPT_0|> {text} label: {label}",
                "total_virtual_tokens": 2, "virtual_token_splits": [2], "answer_only_loss": True,
                "answer_field": "label"}
    return {"name": "srch", "trainer": {"max_steps": 6, "val_check_interval": 1, "precision": 32,
                                        "log_every_n_steps": 1},
            "exp_manager": {"exp_dir": str(tmp_path / "runs")},
            "search": {"tasks": {"a": {"total_virtual_tokens": counts}}, "max_concurrent_trials": 1,
                       "grace_period": 1, "reduction_factor": 2, **search},
            "model": {"language_model_path": str(model), "nemo_path": str(tmp_path / "table"),
                      "new_tasks": ["a"], "task_templates": [template], "global_batch_size": 4,
                      "micro_batch_size": 4, "optim": {"lr": 0.1, "sched": None},
                      "data": {"train_ds": [str(data)], "validation_ds": [str(data)]}}}


def test_apportion_gives_integer_splits_that_sum_to_the_total():
    for total in range(3, 20):
        for shares in ([1, 1, 1], [1, 2, 5], [0.2, 0.3, 0.5]):
            splits = apportion(total, shares)
            assert sum(splits) == total and len(splits) == 3 and min(splits) >= 1
    assert apportion(8, [1, 3]) == [2, 6] and apportion(2, [1, 100]) == [1, 1]


def test_invalid_spaces_are_every_problem_at_once_before_any_trial(tmp_path, capsys):
    raw = search_config(tmp_path, tmp_path / "no-model", [])
    raw["model"]["task_templates"].append({"taskname": "b", "prompt_template":
                                           "<|VIRTUAL_PROMPT_0|> {x} <|VIRTUAL_PROMPT_1|> {y} is {z}",
                                           "total_virtual_tokens": 2, "virtual_token_splits": [1, 1]})
    raw["model"]["new_tasks"] = ["a", "b", "c"]
    raw["model"]["task_templates"].append({**raw["model"]["task_templates"][0], "taskname": "c"})
    raw["search"]["tasks"]["b"] = {"total_virtual_tokens": {"min": 1, "max": 3}, "splits": [[1, 0], [1, 1, 1]],
                                   "init": []}
    raw["ray"] = {"max_failures": 1}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for expected in ("search.tasks.a.total_virtual_tokens: empty choice list",
                     "search.tasks.b.total_virtual_tokens: counts [1] are below the template's 2",
                     "search.tasks.b.splits[0]: [1.0, 0.0] has shares <= 0",
                     "search.tasks.b.splits[1]: [1.0, 1.0, 1.0] has 3 share(s)",
                     "search.tasks.b.init: empty choice list", "search.tasks: new task 'c' has no entry",
                     "ray.max_failures: 1"):
        assert expected in err, err
    assert not (tmp_path / "runs").exists()  # nothing ran
    with pytest.raises(ConfigError, match="search: missing section"):
        prepare_search_config({k: v for k, v in search_config(tmp_path, tmp_path, [2]).items() if k != "search"})


@pytest.mark.ray
def test_search_finds_the_best_count_publishes_it_once_and_asha_stops_bad_trials(tmp_path, tiny_gpt2_path,
                                                                               ray_local):
    cfg = prepare_search_config(search_config(tmp_path, tiny_gpt2_path, [24, 2, 1]))
    payload = run_search(cfg)
    best = payload["best"]["a"]
    assert best["config"]["a.total_virtual_tokens"] == 24
    trials = json.loads((Path(payload["run_dir"]) / "trials.json").read_text())
    assert len(trials) == 3 and all(t["status"] == "ok" for t in trials)
    by_count = {t["config/a.total_virtual_tokens"]: t for t in trials}
    assert by_count[24]["iterations"] == 6  # the best ran to the end ...
    assert min(by_count[2]["iterations"], by_count[1]["iterations"]) < 6  # ... ASHA stopped a bad one early
    assert best["val_loss"] == by_count[24]["val_loss"] < min(by_count[2]["val_loss"], by_count[1]["val_loss"])
    table = PromptTable(payload["table"])
    assert len(table.history("a")) == 1  # exactly one version: the best trial's
    prompt = table.get("a")
    assert prompt.num_virtual_tokens == 24 and prompt.template["virtual_token_splits"] == [24]
    assert prompt.source["search_id"] == payload["search_id"] and prompt.source["job"] == "promptray search"
    assert prompt.source["trial_config"]["a.total_virtual_tokens"] == 24
    assert prompt.metrics["val_loss"] == best["val_loss"]
    run_dir = Path(payload["run_dir"])
    assert {"trials.csv", "trials.json", "search_plot.png", "tune"} <= {p.name for p in run_dir.iterdir()}
    assert (run_dir / "trials.csv").read_text().count("\n") == 4


@pytest.mark.ray
def test_a_crashed_search_resumes_and_finishes(tmp_path, tiny_gpt2_path, ray_local, monkeypatch):
    monkeypatch.setenv(FAULTS_ENV, json.dumps({"stop_after_trials": 1}))  # the driver "crashes" once, after 1 trial
    raw = search_config(tmp_path, tiny_gpt2_path, [8, 1])
    raw["trainer"]["max_steps"] = 3
    cfg = prepare_search_config(raw)
    with pytest.raises(SearchInterrupted):
        run_search(cfg)
    assert not PromptTable(str(tmp_path / "table")).exists()  # nothing published by the crashed driver
    payload = run_search(cfg)  # the same run dir: Tuner.restore
    run_dir = Path(payload["run_dir"])
    assert (run_dir / ".promptray_search_crashed").is_file()
    assert len(list((run_dir / "trials").iterdir())) == 2  # restored: the finished trial was not run again
    trials = json.loads((run_dir / "trials.json").read_text())
    assert sorted(t["config/a.total_virtual_tokens"] for t in trials) == [1, 8]
    assert payload["best"]["a"]["config"]["a.total_virtual_tokens"] == 8
    assert len(PromptTable(payload["table"]).history("a")) == 1


@pytest.mark.ray
def test_tasks_are_searched_independently_with_splits_and_an_accuracy_objective(tmp_path, tiny_gpt2_path,
                                                                                ray_local):
    raw = search_config(tmp_path, tiny_gpt2_path, [2], num_samples=2, metric="val_accuracy", max_new_tokens=3)
    raw["trainer"]["max_steps"] = 2
    data = Path(raw["model"]["data"]["train_ds"][0])
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows + [{**r, "taskname": "b"} for r in rows]))
    raw["model"]["new_tasks"] = ["a", "b"]
    raw["model"]["task_templates"].append({**raw["model"]["task_templates"][0], "taskname": "b",
                                           "prompt_template": "<|VIRTUAL_PROMPT_0|> {text} <|VIRTUAL_PROMPT_1|> "
                                                              "label: {label}", "virtual_token_splits": [1, 1]})
    raw["search"]["tasks"]["b"] = {"total_virtual_tokens": [5], "splits": [[1, 1], [1, 3]]}
    payload = run_search(prepare_search_config(raw))
    assert set(payload["best"]) == {"a", "b"}  # one Tuner per task (prompt tuning shares nothing)
    trials = json.loads((Path(payload["run_dir"]) / "trials.json").read_text())
    assert sorted(t["group"] for t in trials) == ["a", "a", "b", "b"]
    table = PromptTable(payload["table"])
    for task, group_best in payload["best"].items():
        assert len(table.history(task)) == 1
        prompt = table.get(task)
        assert prompt.source["group"] == task and prompt.source["trial_id"] == group_best["trial_id"]
        assert 0.0 <= prompt.metrics["val_accuracy"] == group_best["val_accuracy"] <= 1.0
    b = table.get("b")
    chosen = payload["best"]["b"]["config"]["b.split"]
    assert b.template["virtual_token_splits"] == [[3, 2], [1, 4]][chosen] and b.num_virtual_tokens == 5


def _cpus_freed(ray, expected: float, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while ray.available_resources().get("CPU", 0) < expected and time.monotonic() < deadline:
        time.sleep(0.5)
    return ray.available_resources().get("CPU", 0) >= expected


@pytest.mark.ray
def test_two_worker_trials_run_as_torch_trainers_report_to_asha_and_publish_the_best_once(tmp_path,
                                                                                        tiny_gpt2_path, ray_local):
    raw = search_config(tmp_path, tiny_gpt2_path, [24, 1])
    raw["ray"] = {"num_workers": 2}  # Ray's default 1 CPU per worker: the session's 2 CPUs, one trial at a time
    raw["model"]["micro_batch_size"] = 2  # global batch 4 = 2 workers x micro-batch 2
    cfg = prepare_search_config(raw)
    payload = run_search(cfg)
    run_dir = Path(payload["run_dir"])
    trials = json.loads((run_dir / "trials.json").read_text())
    assert len(trials) == 2 and all(t["status"] == "ok" and t["workers"] == 2 for t in trials)
    by_count = {t["config/a.total_virtual_tokens"]: t for t in trials}
    assert by_count[24]["iterations"] == 6 and by_count[24]["last_step"] == 6  # every validation reached Tune
    assert by_count[1]["iterations"] < 6  # ASHA stopped the weak trial: its Train run ended with it ...
    assert _cpus_freed(ray_local, 2)  # ... and its workers' CPUs came back
    best = payload["best"]["a"]
    assert best["config"]["a.total_virtual_tokens"] == 24 and best["val_loss"] == by_count[24]["val_loss"]
    table = PromptTable(payload["table"])
    assert len(table.history("a")) == 1  # only the best trial published, once
    prompt = table.get("a")
    assert prompt.num_virtual_tokens == 24 and prompt.template["virtual_token_splits"] == [24]
    assert prompt.source["search_id"] == payload["search_id"] and prompt.source["trial_id"] == best["trial_id"]
    assert prompt.source["trial_config"] == {"a.total_virtual_tokens": 24}
    assert prompt.metrics["val_loss"] == best["val_loss"]
    # rank 0 saved the prompts of the best validation; they are what was published
    saved = torch.load(run_dir / "trials" / best["trial_id"] / "best_prompts.pt", weights_only=True)
    torch.testing.assert_close(prompt.embeddings, saved["a"])
    records = [json.loads(line) for line in (run_dir / "trials" / best["trial_id"] / "metrics.jsonl")
               .read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]  # one metrics file, written by rank 0
    assert min(r["val_loss"] for r in records) == best["val_loss"]


@pytest.mark.ray
def test_p_tuning_tasks_share_one_encoder_in_real_joint_trials(tmp_path, tiny_gpt2_path, ray_local):
    raw = search_config(tmp_path, tiny_gpt2_path, [3], style=["p-tuning"])
    raw["trainer"]["max_steps"] = 3
    data = Path(raw["model"]["data"]["train_ds"][0])
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows + [{**r, "taskname": "b"} for r in rows]))
    raw["model"]["new_tasks"] = ["a", "b"]
    raw["model"]["task_templates"].append({**raw["model"]["task_templates"][0], "taskname": "b",
                                           "prompt_template": "<|VIRTUAL_PROMPT_0|> {text} <|VIRTUAL_PROMPT_1|> "
                                                              "label: {label}", "virtual_token_splits": [1, 1]})
    raw["search"]["tasks"]["b"] = {"total_virtual_tokens": [2, 6]}
    payload = run_search(prepare_search_config(raw))
    assert set(payload["best"]) == {"joint"}  # one Tuner, each trial trains both tasks with one encoder
    trials = json.loads((Path(payload["run_dir"]) / "trials.json").read_text())
    assert len(trials) == 2 and {t["group"] for t in trials} == {"joint"}
    assert sorted(t["config/b.total_virtual_tokens"] for t in trials) == [2, 6]
    best = payload["best"]["joint"]
    table = PromptTable(payload["table"])
    for task, tokens in (("a", 3), ("b", best["config"]["b.total_virtual_tokens"])):
        assert len(table.history(task)) == 1
        prompt = table.get(task)
        assert prompt.style == "p-tuning" and prompt.num_virtual_tokens == tokens
        assert prompt.source["group"] == "joint" and prompt.source["trial_id"] == best["trial_id"]
        assert prompt.metrics["val_loss"] == best["val_loss"]
    assert table.get("b").template["virtual_token_splits"] == [tokens // 2, tokens // 2]


class _FakeJobs:
    """Stands in for the Ray Jobs API: one finished job whose log holds a search's result line."""

    address = "http://fake:8265"

    def __init__(self, log: str):
        self.log = log

    def status(self, job_id):
        from promptray.sdk import JobStatus
        return JobStatus.SUCCEEDED

    def logs(self, job_id):
        return self.log


def test_sdk_submit_search_checks_the_config_and_its_job_reports_the_best_trial(tmp_path):
    from promptray.sdk import Client, JobConfigError, SearchJob

    raw = search_config(tmp_path, tmp_path / "model", [2])
    with pytest.raises(JobConfigError, match="search: missing section") as e:
        Client(address="http://127.0.0.1:1").submit_search({k: v for k, v in raw.items() if k != "search"})
    assert str(e.value).startswith("invalid search job (1 problem)") and e.value.job == "search job"
    raw["search"]["tasks"]["a"]["total_virtual_tokens"] = []
    with pytest.raises(JobConfigError, match="empty choice list"):  # checked before anything is submitted
        Client(address="http://127.0.0.1:1").submit_search(raw)
    payload = {"search_id": "s-1", "table": "/t", "versions": {"a": "v1"}, "metric": "val_loss", "trials": 3,
               "trials_errored": 1,
               "best": {"a": {"trial_id": "x_00000", "val_loss": 1.5, "config": {"a.total_virtual_tokens": 24}}}}
    job = SearchJob(_FakeJobs("noise\nPROMPTRAY_RESULT " + json.dumps(payload) + "\n"), "raysubmit_1")
    result = job.result()
    assert result.best["a"].config == {"a.total_virtual_tokens": 24} and result.best_value("a") == 1.5
    assert result.versions == {"a": "v1"} and result.search_id == "s-1" and result.trials_errored == 1


def test_p_tuning_tasks_are_searched_jointly_and_trial_configs_apply_every_choice(tmp_path, tiny_gpt2_path):
    from promptray.jobs.search_space import param_space, search_groups, trial_config

    raw = search_config(tmp_path, tiny_gpt2_path, [2, 4], style=["prompt-tuning", "p-tuning"],
                        lr={"min": 1e-3, "max": 1e-1})
    raw["model"]["new_tasks"] = ["a", "b"]
    raw["model"]["task_templates"].append({**raw["model"]["task_templates"][0], "taskname": "b",
                                           "prompt_template": "<|VIRTUAL_PROMPT_0|> {text} <|VIRTUAL_PROMPT_1|> "
                                                              "label: {label}", "virtual_token_splits": [1, 1]})
    raw["search"]["tasks"]["b"] = {"total_virtual_tokens": {"min": 3, "max": 9, "step": 3}, "splits": [[1, 2]],
                                   "init": ["vocab"]}
    cfg = prepare_search_config(raw)
    assert search_groups(cfg) == {"joint": ["a", "b"]}  # a p-tuning candidate shares one encoder
    space = param_space(cfg.search, ["a", "b"], "prompt-tuning")
    assert set(space) == {"a.total_virtual_tokens", "b.total_virtual_tokens", "b.init", "lr", "style"}
    assert space["b.total_virtual_tokens"] == {"grid_search": [3, 6, 9]}
    choice = {"a.total_virtual_tokens": 4, "b.total_virtual_tokens": 9, "b.init": "vocab", "lr": 0.02,
              "style": "p-tuning"}
    trial = load_job_config(trial_config(cfg.model_dump(mode="json"), ["a", "b"], choice, str(tmp_path / "t")))
    assert trial.model.virtual_prompt_style == "p-tuning" and trial.model.optim.lr == 0.02 and trial.search is None
    assert [(t.total_virtual_tokens, t.virtual_token_splits) for t in trial.templates] == [(4, [4]), (9, [3, 6])]
    assert trial.model.prompt_tuning.new_prompt_init_methods == ["random", "vocab"]
    assert str(trial.run_dir) == str(tmp_path / "t")
    raw["search"]["tasks"]["a"]["lr"] = {"min": 1e-3, "max": 1e-2}
    with pytest.raises(ConfigError, match="search.tasks.a.lr: tasks are searched jointly"):
        prepare_search_config(raw)


def test_a_searched_lr_scales_the_schedule_min_lr_with_it(tmp_path, tiny_gpt2_path):
    """The schedule keeps its shape: min_lr / lr stays the base config's ratio (3e-3 / 3e-2 = 0.1), so a
    candidate lr below the base min_lr is a decaying schedule, not a config error."""
    from promptray.jobs.search_space import trial_config

    raw = search_config(tmp_path, tiny_gpt2_path, [2, 4], lr={"min": 1e-3, "max": 1e-1})
    raw["model"]["optim"] = {"lr": 3e-2, "sched": {"name": "CosineAnnealing", "warmup_steps": 2, "min_lr": 3e-3}}
    base = prepare_search_config(raw).model_dump(mode="json")
    for lr, min_lr in ((2e-3, 2e-4), (9e-2, 9e-3)):
        trial = load_job_config(trial_config(base, ["a"], {"a.total_virtual_tokens": 2, "lr": lr},
                                             str(tmp_path / "t")))
        assert trial.model.optim.lr == lr and trial.model.optim.sched.min_lr == pytest.approx(min_lr)
    same = load_job_config(trial_config(base, ["a"], {"a.total_virtual_tokens": 2}, str(tmp_path / "t")))
    assert (same.model.optim.lr, same.model.optim.sched.min_lr) == (3e-2, 3e-3)  # no lr searched: unchanged


def test_trial_resources_follow_the_worker_count_and_use_gpu(tmp_path, tiny_gpt2_path):
    from promptray.jobs.search_trial import DRIVER_RESOURCES, trial_resources

    raw = search_config(tmp_path, tiny_gpt2_path, [2, 4])
    assert trial_resources(prepare_search_config(raw), 2.0) == {"cpu": 2}
    raw["ray"] = {"use_gpu": True}
    assert trial_resources(prepare_search_config(raw), 2.0) == {"cpu": 2, "gpu": 1}  # a one-worker trial's GPU
    raw["ray"]["num_workers"], raw["model"]["micro_batch_size"] = 2, 2
    assert trial_resources(prepare_search_config(raw), 2.0) == DRIVER_RESOURCES  # the Train workers reserve theirs


def test_a_trial_gets_its_share_of_the_cluster_cpus_unless_set(tmp_path):
    from promptray.jobs.search_trial import trial_cpus

    def cpus(available=None, **settings):
        s = load_job_config(search_config(tmp_path, tmp_path / "no-model", [2, 4], **settings)).search
        return trial_cpus(s, [2.0], available)

    assert cpus() == 2.0  # one trial at a time on a 2-CPU machine: both cores (it was 1)
    assert cpus(max_concurrent_trials=2) == 1.0
    assert cpus(available=1.0) == 1.0  # the other CPU is held (a serve replica): the trial does not wait for it
    assert cpus(cpus_per_trial=0.5, max_concurrent_trials=4) == 0.5  # as set


def test_candidate_counts_are_checked_against_the_models_positions_before_any_trial(tmp_path, capsys):
    from transformers import GPT2Config

    model = tmp_path / "m512"  # config.json only: no trial could load it
    GPT2Config(n_layer=1, n_head=2, n_embd=8, n_positions=512).save_pretrained(model)
    raw = search_config(tmp_path, model, [2, 600, 509, 508])
    with pytest.raises(ConfigError) as e:
        prepare_search_config(raw)
    assert e.value.problems == [
        "search.tasks.a.total_virtual_tokens: [509, 600] virtual tokens + at least 4 text tokens (no tokenizer files "
        f"to count the template's) need 604 positions, more than the 512 positions of base model '{model}' "
        "(max_position_embeddings); use at most 508 virtual tokens"]
    assert not (tmp_path / "runs").exists()


def test_a_search_config_with_four_problems_reports_them_at_once_and_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = search_config(tmp_path, tmp_path / "no-model", [2])
    m = raw["model"]
    m["optim"]["lr"], m["global_batch_size"] = -1, 6
    m["task_templates"][0]["virtual_token_splits"] = [1]
    m["data"]["train_ds"] = ["missing.jsonl"]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "(4 problems)" in err and "Traceback" not in err, err
    for key in ("model.data.train_ds[0]: file 'missing.jsonl'", "model.optim.lr: got -1",
                "virtual_token_splits [1] sum to 1", "model.global_batch_size: 6 is not a multiple"):
        assert key in err


@pytest.mark.ray
def test_a_trial_that_errs_keeps_its_id_config_and_a_plain_one_line_error(tmp_path, tiny_gpt2_path, ray_local):
    raw = search_config(tmp_path, tiny_gpt2_path, [2, 11])
    # 11 virtual tokens + the template's 5 (text, answer space, EOS) fit 16 up front; with the records' words
    # every example is over 16, and the template has no truncate_field: trial 11 errs at run time
    raw["model"]["data"]["max_seq_length"] = 16
    payload = run_search(prepare_search_config(raw))
    assert payload["trials"] == 2 and payload["trials_errored"] == 1
    assert payload["best"]["a"]["config"]["a.total_virtual_tokens"] == 2
    trials = {t["config/a.total_virtual_tokens"]: t for t in
              json.loads((Path(payload["run_dir"]) / "trials.json").read_text())}
    bad = trials[11]
    assert bad["status"] == "error" and bad["trial_id"] and bad["trial_id"] != trials[2]["trial_id"]
    assert bad["error"].startswith("ConfigError: model.data.train_ds: 0 usable training examples for new tasks "
                                   "['a']; need at least micro_batch_size=4 (a: 0 kept, 0 truncated, 16 dropped; "
                                   "task 'a': 16 example(s) of up to "), bad["error"]
    assert ("tokens (11 virtual) are longer than max_seq_length 16 (model.data.max_seq_length), and its template "
            "has no truncate_field to cut (set one); raise model.data.max_seq_length, lower total_virtual_tokens or "
            "shorten those records)") in bad["error"]
    assert "\n" not in bad["error"] and "\x1b" not in bad["error"] and "Traceback" not in bad["error"]
    csv_text = (Path(payload["run_dir"]) / "trials.csv").read_text()
    assert bad["trial_id"] in csv_text and "\x1b" not in csv_text


def test_search_ranges_are_checked_with_the_rest_of_the_config(tmp_path):
    raw = search_config(tmp_path, tmp_path / "no-model", [0, 2, -1], num_samples=0, grace_period=0,
                        reduction_factor=1, seed=-1, time_budget_s=0, lr={"min": 0.1, "max": 0.1})
    with pytest.raises(ConfigError) as e:
        load_job_config(raw)
    assert e.value.problems == [
        "search.lr: max 0.1 is not above min 0.1; give min < max (for a fixed learning rate drop the range and set "
        "model.optim.lr) (got {'min': 0.1, 'max': 0.1})",
        "search.num_samples: got 0; use a value >= 1", "search.time_budget_s: got 0; use a value > 0.0",
        "search.seed: got -1; use a value >= 0", "search.grace_period: got 0; use a value >= 1",
        "search.reduction_factor: got 1; use a value > 1.0",
        "search.tasks.a.total_virtual_tokens: counts [0, -1] are below the template's 1 virtual marker(s); every "
        "marker needs >= 1 token, use counts >= 1"]


def test_a_searched_tasks_template_count_is_replaced_by_its_candidates_in_the_limit_checks(tmp_path, tiny_gpt2_path):
    raw = search_config(tmp_path, tiny_gpt2_path, [2, 4])  # tiny-gpt2 takes 256 positions
    raw["model"]["task_templates"][0].update(total_virtual_tokens=300, virtual_token_splits=[300])
    assert prepare_search_config(raw).search.tasks["a"].counts == [2, 4]  # 300 is never trained

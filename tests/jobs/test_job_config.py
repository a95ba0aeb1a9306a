"""The job config (jobs/config.py): the engine's config plus `ray:` and `search:`, loaded by the engine's one
loader so every problem comes out in one report; and the test-only fault hooks (jobs/faults.py)."""

from __future__ import annotations

import pytest

from promptray.jobs.config import JobConfig, load_job_config
from promptray.jobs.faults import FAULTS_ENV, Faults, faults_from_env
from promptray.platform.config.schema import PromptLearningConfig
from promptray.platform.errors import ConfigError
from tests.platform.config.test_config import minimal


def job_problems_of(source, overrides=None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_job_config(source, overrides)
    return info.value.problems


def with_search(**search) -> dict:
    raw = minimal()
    raw["model"]["data"]["validation_ds"] = ["val.jsonl"]
    raw["search"] = {"tasks": {"sentiment": {"total_virtual_tokens": [4, 8]}}, **search}
    return raw


# ----------------------------------------------------------------------------- the `ray` section

def test_ray_section_defaults_and_worker_count():
    cfg = load_job_config(minimal())
    assert isinstance(cfg, JobConfig) and isinstance(cfg, PromptLearningConfig)
    r = cfg.ray
    assert (r.num_workers, r.use_gpu, r.resources_per_worker, r.checkpoint_every_n_steps, r.num_to_keep,
            r.max_failures, r.storage_path) == (None, False, None, None, 2, 0, None)
    assert cfg.model.sharding == "none" and cfg.world_size == 1 and cfg.search is None
    raw = minimal(global_batch_size=16, micro_batch_size=4, sharding="fsdp")
    raw["ray"] = {"num_workers": 2, "resources_per_worker": {"CPU": 2}, "max_failures": -1}
    cfg = load_job_config(raw)
    # NeMo's rule with the Ray workers: 16 = 4 x 2 workers x 2; a single process accumulates 4
    assert (cfg.world_size, cfg.accumulation, cfg.accumulation_for(1)) == (2, 2, 4)
    raw = minimal(global_batch_size=16, micro_batch_size=4)
    raw["trainer"].update(devices=2, num_nodes=2)  # NeMo's devices x num_nodes counts the workers
    assert load_job_config(raw).world_size == 4


def test_ray_section_problems_are_reported_together_with_the_engines():
    raw = minimal(global_batch_size=8, micro_batch_size=4, sharding="fsdp", lm_finetune=True)
    raw["trainer"]["devices"] = 2
    raw["ray"] = {"num_workers": 3, "use_gpu": True, "resources_per_worker": {"CPU": 1},
                  "num_to_keep": 0, "max_failurs": 1}
    problems = job_problems_of(raw)
    keys = [p.split(":")[0] for p in problems]
    assert keys == ["ray.num_to_keep", "ray.max_failurs", "model.global_batch_size", "ray.num_workers",
                    "model.sharding", "ray.resources_per_worker"], problems
    assert "(did you mean 'max_failures'?)" in problems[1]
    assert "8 is not a multiple of micro_batch_size x data-parallel size = 4 x 3" in problems[2]
    assert "3 disagrees with trainer.devices x trainer.num_nodes = 2 x 1" in problems[3]
    raw = minimal()
    raw["ray"] = {"resources_per_worker": {"CPU": -1}}
    raw["model"]["sharding"] = "ddp"
    problems = job_problems_of(raw)
    assert [p.split(":")[0] for p in problems] == ["model.sharding", "ray.resources_per_worker"]
    assert "'ddp'" in problems[0] and "negative amounts {'CPU': -1.0}" in problems[1]


def test_fault_hooks_are_not_config_keys():
    raw = minimal()
    raw["ray"] = {"fail_at_step": 3, "fail_after_publish": True}
    raw["model"]["data"]["validation_ds"] = ["val.jsonl"]
    raw["search"] = {"tasks": {"sentiment": {"total_virtual_tokens": [4]}}, "stop_after_trials": 1}
    assert sorted(p.split(":")[0] for p in job_problems_of(raw)) == [
        "ray.fail_after_publish", "ray.fail_at_step", "search.stop_after_trials"]


@pytest.mark.parametrize("override, expected", [
    ("ray.num_workers=false", "ray.num_workers: false is a boolean, not a number; give a number (got False)"),
    ("ray.num_to_keep=0", "ray.num_to_keep: got 0; use a value >= 1"),
])
def test_ray_numbers_have_their_ranges(override, expected):
    assert job_problems_of(minimal(), [override]) == [expected]


# ----------------------------------------------------------------------------- the `search` section (issue 13)

def test_a_dict_over_a_list_replaces_it():
    cfg = load_job_config(with_search(), ["search.tasks.sentiment.total_virtual_tokens={min: 4, max: 8, step: 2}"])
    assert cfg.search.tasks["sentiment"].counts == [4, 6, 8]
    assert cfg.fixed_count_tasks() == [] and cfg.candidate_counts() == {
        "sentiment": ("search.tasks.sentiment.total_virtual_tokens", [4, 6, 8])}


def test_every_problem_of_a_search_config_comes_in_one_report():
    raw = with_search(num_samples=0, max_concurrent_trials=0, cpus_per_trial=0, time_budget_s=-1, seed=-1,
                      grace_period=0, reduction_factor=1, max_new_tokens=0, metric="acc", style=["lora"])
    raw["search"]["tasks"]["nope"] = {"total_virtual_tokens": [4]}
    raw["model"]["micro_batch_size"] = 0
    problems = job_problems_of(raw, ["search.tasks.sentiment.total_virtual_tokens={min:10,max:5,step:0}"])
    keys = [p.split(":")[0] for p in problems]
    assert sorted(keys) == sorted(["search.num_samples", "search.max_concurrent_trials", "search.cpus_per_trial",
                    "search.time_budget_s", "search.seed", "search.grace_period", "search.reduction_factor",
                    "search.max_new_tokens", "search.metric", "search.style.0", "model.micro_batch_size",
                    "search.tasks.sentiment.total_virtual_tokens", "search.tasks.nope"]), problems
    sentiment = problems[keys.index("search.tasks.sentiment.total_virtual_tokens")]
    assert "step: got 0; use a value >= 1" in sentiment
    assert "max 5 is below min 10; give min <= max" in sentiment
    assert "a range {min: 8, max: 32, step: 8}" in sentiment and "valid list" not in sentiment
    assert problems[keys.index("search.tasks.nope")] == (
        "search.tasks.nope: 'nope' is not in model.new_tasks ['sentiment']; search new tasks only")


def test_a_range_of_another_type_names_the_accepted_forms():
    problems = job_problems_of(with_search(), ["search.tasks.sentiment.total_virtual_tokens=12"])
    assert problems == ["search.tasks.sentiment.total_virtual_tokens: give a list of counts, e.g. [8, 16, 32], or a "
                        "range {min: 8, max: 32, step: 8} (max included) (got 12)"]


def test_search_candidates_are_checked_against_max_seq_length():
    raw = with_search()
    raw["search"]["tasks"]["sentiment"]["total_virtual_tokens"] = [4, 60]
    raw["model"]["data"]["max_seq_length"] = 32
    assert job_problems_of(raw) == [
        "search.tasks.sentiment.total_virtual_tokens: 60 virtual tokens do not fit model.data.max_seq_length=32; "
        "an example needs its virtual tokens plus at least 4 text tokens, so use at most 28 (or raise "
        "model.data.max_seq_length)"]


# ----------------------------------------------------------------------------- fault hooks (tests only)

def test_faults_come_from_the_environment_only():
    assert faults_from_env({}) == Faults()
    assert faults_from_env({FAULTS_ENV: '{"fail_at_step": 3, "fail_after_publish": true}'}) == Faults(
        fail_at_step=3, fail_after_publish=True)
    assert Faults.from_dict(Faults(stop_after_trials=2).to_dict()) == Faults(stop_after_trials=2)


def test_bad_faults_name_the_variable():
    with pytest.raises(ConfigError) as info:
        faults_from_env({FAULTS_ENV: '{"fail_at_step": 0, "fail_after_publish": 1}'})
    assert info.value.problems == [f"{FAULTS_ENV}: fail_at_step=0; give a whole number >= 1",
                                   f"{FAULTS_ENV}: fail_after_publish=1; give true or false"]
    with pytest.raises(ConfigError, match="keys among"):
        faults_from_env({FAULTS_ENV: '{"fail_at": 3}'})
    with pytest.raises(ConfigError, match="not JSON"):
        faults_from_env({FAULTS_ENV: "fail_at_step=3"})


def test_search_max_new_tokens_keeps_reading_the_old_key():
    """search.max_new_tokens (Hugging Face's name) was search.tokens_to_generate: configs with either load."""
    assert load_job_config(with_search(max_new_tokens=5)).search.max_new_tokens == 5
    assert load_job_config(with_search(tokens_to_generate=6)).search.max_new_tokens == 6
    assert load_job_config(with_search()).search.max_new_tokens == 8

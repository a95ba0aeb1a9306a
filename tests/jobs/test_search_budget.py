"""A budget search end to end: one packed Tune trial trains every candidate within search.budget_steps, cuts
them at the planned rungs by label-ranking accuracy, reports every candidate's curve, steps and state, and
publishes the last rung's survivor once."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from test_search import WORDS, search_config

from promptray.jobs import search_report
from promptray.jobs.search import prepare_search_config, run_search
from promptray.jobs.search_plan import plan_search
from promptray.jobs.search_trial import PUBLICATION
from promptray.platform.data.encoding import TaskEncoding
from promptray.platform.model.fingerprint import fingerprint_model
from promptray.platform.model.hub import load_base_model
from promptray.platform.table.table import PromptTable


@pytest.mark.ray
def test_a_budget_search_packs_the_candidates_cuts_them_at_the_rungs_and_publishes_the_best(tmp_path,
                                                                                          tiny_gpt2_path, ray_local,
                                                                                          monkeypatch):
    raw = search_config(tmp_path, tiny_gpt2_path, [8, 1], num_samples=2, budget_steps=24, metric="val_accuracy",
                        lr={"min": 0.01, "max": 0.3}, val_samples=8)
    rng = random.Random(1)  # a closed label set: two labels, so the objective is label ranking
    rows = [{"taskname": "a", "text": " ".join(rng.sample(WORDS, 3)), "label": rng.choice(["yes", "no"])}
            for _ in range(16)]
    Path(raw["model"]["data"]["train_ds"][0]).write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = prepare_search_config(raw)
    (bracket,) = plan_search(cfg.search, "a", cfg.search.seed).brackets
    assert bracket.steps == [3, 6, 12] and bracket.keep == [2, 1, 1]

    def no_model(tcfg):
        raise AssertionError("the search driver loaded the base model to publish")

    monkeypatch.setattr(search_report, "prepare_engine", no_model)  # the driver: this process (trials run in Ray)
    payload = run_search(cfg)
    run_dir = Path(payload["run_dir"])
    trials = json.loads((run_dir / "trials.json").read_text())
    assert len(trials) == 4 and len({t["trial_id"] for t in trials}) == 1  # four candidates, one packed trial
    assert sorted(t["last_step"] for t in trials) == [3, 3, 6, 12]  # cut at 3 and 6; the last trains to 12
    assert payload["optimizer_steps"] == 24 <= cfg.search.budget_steps
    assert payload["cpus_per_trial"] == 2.0  # one pack at a time on ray_local's 2 CPUs: both
    assert sorted(t["state"] for t in trials) == ["finished", "stopped", "stopped", "stopped"]
    for t in trials:
        assert [p[0] for p in t["curve"]][-1] == t["last_step"] and t["iterations"] == len(t["curve"])
        assert all(0.0 <= p[1] <= 1.0 for p in t["curve"])
        assert t["val_accuracy"] == t["curve"][-1][1]  # a candidate's value: its latest validation's

    def at_rung(t):  # the value at step 3, what the first cut ranks by
        return next(p[1] for p in t["curve"] if p[0] == 3)

    survivors, cut = [t for t in trials if t["last_step"] >= 6], [t for t in trials if t["last_step"] == 3]
    assert min(map(at_rung, survivors)) >= max(map(at_rung, cut))  # the best two went on
    best = payload["best"]["a"]
    (top,) = [t for t in trials if t["state"] == "finished"]  # the last rung's survivor is published
    assert top["pack_best"] and sum(t["pack_best"] for t in trials) == 1
    assert best["val_accuracy"] == top["val_accuracy"] and best["config"]["a.total_virtual_tokens"] == \
        top["config/a.total_virtual_tokens"]
    table = PromptTable(payload["table"])
    assert len(table.history("a")) == 1
    prompt = table.get("a")
    assert prompt.num_virtual_tokens == top["config/a.total_virtual_tokens"]
    assert prompt.source["trial_config"] == best["config"] and prompt.metrics["val_accuracy"] == best["val_accuracy"]
    saved = torch.load(run_dir / "trials" / best["trial_id"] / "best_prompts.pt", weights_only=True)
    torch.testing.assert_close(prompt.embeddings, saved["a"])
    assert (run_dir / "search_plot.png").stat().st_size > 0
    # published with the base model and encoding the trial recorded: those of the model itself
    lm, tok = load_base_model(tiny_gpt2_path)
    assert prompt.base_model == fingerprint_model(lm, tiny_gpt2_path)
    assert prompt.encoding == TaskEncoding.of(tok, add_bos=cfg.model.data.add_bos, add_eos=cfg.model.data.add_eos)
    # a trial of an earlier promptray recorded nothing: the driver then loads the model, and publishes the same
    monkeypatch.undo()
    (run_dir / "trials" / best["trial_id"] / PUBLICATION).unlink()
    row = {**{f"config/{k}": v for k, v in best["config"].items()}, "trial_id": best["trial_id"],
           "val_accuracy": best["val_accuracy"], "iterations": top["iterations"]}
    search_report.publish_best(cfg, {"a": (["a"], row)}, payload["search_id"], run_dir / "trials")
    again = table.get("a")
    assert len(table.history("a")) == 2 and again.base_model == prompt.base_model
    assert again.encoding == prompt.encoding
    torch.testing.assert_close(again.embeddings, prompt.embeddings)


@pytest.mark.ray
def test_a_candidate_whose_examples_do_not_fit_is_an_error_row_and_the_pack_goes_on(tmp_path, tiny_gpt2_path,
                                                                                   ray_local):
    raw = search_config(tmp_path, tiny_gpt2_path, [2, 11], budget_steps=6)
    raw["model"]["data"]["max_seq_length"] = 16  # 11 virtual tokens fit the template, not these records
    payload = run_search(prepare_search_config(raw))
    trials = {t["config/a.total_virtual_tokens"]: t for t in
              json.loads((Path(payload["run_dir"]) / "trials.json").read_text())}
    bad, good = trials[11], trials[2]
    assert bad["status"] == "error" and bad["state"] == "error" and bad["last_step"] == 0
    assert bad["error"].startswith("ConfigError: model.data.train_ds: 0 usable training examples for new tasks "
                                   "['a.c1']"), bad["error"]
    assert good["status"] == "ok" and good["state"] == "finished" and good["last_step"] == 4
    assert payload["trials_errored"] == 1 and payload["best"]["a"]["config"]["a.total_virtual_tokens"] == 2
    assert len(PromptTable(payload["table"]).history("a")) == 1


@pytest.mark.ray
def test_a_search_that_restores_tasks_publishes_them_along_without_loading_the_model(tmp_path, tiny_gpt2_path,
                                                                                    ray_local, monkeypatch):
    """Existing tasks (model.existing_tasks from model.restore_path) go into the search's published version as
    a training run copies them, read by the driver from the restored table, not from a loaded model."""
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    first = run_search(prepare_search_config(search_config(tmp_path / "one", tiny_gpt2_path, [2, 3],
                                                           budget_steps=6)))
    raw = search_config(tmp_path / "two", tiny_gpt2_path, [2, 3], budget_steps=6)
    data = Path(raw["model"]["data"]["train_ds"][0])
    data.write_text(data.read_text().replace('"taskname": "a"', '"taskname": "b"'))
    raw["model"]["task_templates"][0]["taskname"] = "b"
    raw["model"].update({"new_tasks": ["b"], "restore_path": first["table"], "existing_tasks": ["a"]})
    raw["search"]["tasks"] = {"b": raw["search"]["tasks"].pop("a")}

    def no_model(tcfg):
        raise AssertionError("the search driver loaded the base model to publish")

    monkeypatch.setattr(search_report, "prepare_engine", no_model)
    second = run_search(prepare_search_config(raw))
    restored, published = PromptTable(first["table"]), PromptTable(second["table"])
    assert second["table"] != first["table"] and sorted(published.tasks()) == ["a", "b"]
    old, copied = restored.get("a"), published.get("a")
    torch.testing.assert_close(copied.embeddings, old.embeddings)
    assert copied.source == old.source and copied.metrics == old.metrics and copied.base_model == old.base_model
    assert published.get("b").base_model == old.base_model and published.get("b").source["search_id"] == \
        second["search_id"]

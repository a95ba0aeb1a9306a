"""Packed candidates: each candidate of a pack ends equal to the same candidate trained alone (its own count,
init, learning rate and schedule), a stopped candidate no longer trains, and bad packs are refused."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from promptray.platform.config.schema import PromptLearningConfig, load_config
from promptray.platform.errors import ConfigError
from promptray.platform.train.pack import PackLoop
from promptray.platform.train.trainer import build_loop, prepare_engine

WORDS = "apple river stone cloud green tiger music paper candle window garden silver".split()
# (tokens, init, lr, schedule): every candidate differs from the others in all of them
CANDIDATES = {"c0": (4, "random", 0.1, None), "big": (250, "random", 0.1, None),  # big: no example fits 256
              "c1": (2, "text", 0.03, {"name": "CosineAnnealing", "warmup_steps": 1, "min_lr": 0.003}),
              "c2": (6, "vocab", 0.05, {"name": "CosineAnnealing", "min_lr": 0.0})}


def candidate_config(tmp_path: Path, model: Path, name: str, steps: int = 4) -> PromptLearningConfig:
    tokens, init, lr, sched = CANDIDATES[name]
    rng = random.Random(0)
    rows = [{"taskname": "a", "text": " ".join(rng.sample(WORDS, rng.randint(2, 6))),
             "label": " ".join(rng.sample(WORDS, 2))} for _ in range(12)]
    data = tmp_path / "a.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    template = {"taskname": "a", "prompt_template": "<|VIRTUAL_PROMPT_0|> {text} label: {label}",
                "total_virtual_tokens": tokens, "virtual_token_splits": [tokens], "answer_only_loss": True,
                "answer_field": "label"}
    return load_config({
        "name": name, "trainer": {"max_steps": steps, "val_check_interval": 2, "precision": 32,
                                  "gradient_clip_val": 0.5},
        "exp_manager": {"exp_dir": str(tmp_path / "runs")},
        "model": {"language_model_path": str(model), "nemo_path": str(tmp_path / "table"), "new_tasks": ["a"],
                  "task_templates": [template], "global_batch_size": 4, "micro_batch_size": 2,
                  "optim": {"lr": lr, "sched": sched},
                  "prompt_tuning": {"new_prompt_init_methods": [init], "new_prompt_init_text": ["name the words"]},
                  "data": {"train_ds": [str(data)], "validation_ds": [str(data)]}}})


# how a pack runs its candidates' passes: one after the other, one mixed forward, or two at once on threads
HOW = {"own_forwards": {}, "shared_forwards": {"shared_forward": True}, "two_streams": {"streams": 2}}


@pytest.mark.parametrize("how", HOW)
def test_a_candidate_trained_in_a_pack_ends_equal_to_it_trained_alone(tmp_path, tiny_gpt2_path, how):
    cfgs = {n: candidate_config(tmp_path, tiny_gpt2_path, n) for n in ("c0", "c1", "c2")}
    pack = PackLoop(prepare_engine(cfgs["c0"]), "a", cfgs, **HOW[how])
    curves = {n: [] for n in cfgs}
    for step in range(1, 5):
        pack.step()
        if step % 2 == 0:
            recs = pack.validate_all(dict.fromkeys(cfgs))  # all three (two at a time with streams)
            for n in cfgs:
                curves[n].append(recs[n]["val_loss"])
            assert pack.engine.model.training
    assert pack.candidate_steps == 12 and all(c.state == "finished" for c in pack.candidates.values())
    for name, cfg in cfgs.items():
        alone = build_loop(cfg)
        alone.run()
        torch.testing.assert_close(pack.engine.model.bank.get(name).detach(),
                                   alone.engine.model.bank.get("a").detach(), atol=1e-5, rtol=1e-4)
        vals = [r["val_loss"] for r in alone.writer.records if "val_loss" in r]
        assert curves[name] == pytest.approx(vals, abs=1e-4)  # the same validation curve
        assert pack.candidates[name].best == pytest.approx(alone.state.best_val, abs=1e-4)
        assert pack.candidates[name].last_loss == pytest.approx(alone.state.last_loss, rel=1e-5)  # its own mean
        torch.testing.assert_close(pack.prompts(name), alone.best_prompts["a"], atol=1e-5, rtol=1e-4)
        assert pack.scheduler.get_last_lr()[list(cfgs).index(name)] == pytest.approx(alone.scheduler.get_last_lr()[0])


@pytest.mark.parametrize("how", HOW)
def test_a_stopped_candidate_trains_no_more_and_the_others_are_unaffected(tmp_path, tiny_gpt2_path, how):
    cfgs = {n: candidate_config(tmp_path, tiny_gpt2_path, n, steps=3) for n in ("c0", "c1", "c2")}
    pack = PackLoop(prepare_engine(cfgs["c0"]), "a", cfgs, **HOW[how])
    pack.step()
    pack.stop("c0")
    frozen = pack.engine.model.bank.get("c0").detach().clone()
    assert set(pack.step()) == {"c1", "c2"} and pack.running == ["c1", "c2"]
    pack.step()
    torch.testing.assert_close(pack.engine.model.bank.get("c0").detach(), frozen, atol=0, rtol=0)
    assert pack.candidates["c0"].done == 1 and pack.candidates["c0"].state == "stopped"
    assert pack.candidate_steps == 7
    for name in ("c1", "c2"):
        alone = build_loop(cfgs[name])
        alone.run()
        torch.testing.assert_close(pack.engine.model.bank.get(name).detach(),
                                   alone.engine.model.bank.get("a").detach(), atol=1e-5, rtol=1e-4)


def test_keep_last_keeps_each_candidates_latest_validation_even_when_an_earlier_one_was_better(tmp_path,
                                                                                             tiny_gpt2_path):
    cfgs = {n: candidate_config(tmp_path, tiny_gpt2_path, n, steps=3) for n in ("c0", "c1")}
    readings = iter([0.9, 0.4, 0.5, 0.2])  # c0, c1 after step 1; c0, c1 after step 2 (c0 worse, c1 worse)
    best = PackLoop(prepare_engine(cfgs["c0"]), "a", cfgs, metric="val_accuracy", mode="max")
    last = PackLoop(prepare_engine(cfgs["c0"]), "a", cfgs, metric="val_accuracy", mode="max", keep="last")
    kept = {}
    for step in (1, 2):
        for pack in (best, last):
            pack.step()
        for name in cfgs:
            value = next(readings)
            for pack in (best, last):
                pack.validate(name, lambda v=value: v)
            kept[name, step] = last.engine.model.bank.export([name])[name]
    for name, (first, second) in {"c0": (0.9, 0.5), "c1": (0.4, 0.2)}.items():
        assert (best.candidates[name].best, best.candidates[name].best_step) == (first, 1)
        assert (last.candidates[name].best, last.candidates[name].best_step) == (second, 2)
        torch.testing.assert_close(best.prompts(name), kept[name, 1], atol=1e-6, rtol=0)  # the same training
        torch.testing.assert_close(last.prompts(name), kept[name, 2], atol=0, rtol=0)
        assert not torch.allclose(kept[name, 1], kept[name, 2])  # the prompt moved between the validations


def test_packs_take_prompt_tuning_candidates_of_one_task_with_equal_batches(tmp_path, tiny_gpt2_path):
    cfgs = {n: candidate_config(tmp_path, tiny_gpt2_path, n) for n in ("c0", "c1")}
    raw = cfgs["c1"].model_dump(mode="json")
    raw["model"]["micro_batch_size"], raw["model"]["virtual_prompt_style"] = 4, "p-tuning"
    raw["model"]["prompt_tuning"] = {}
    cfgs["c1"] = load_config(raw)
    with pytest.raises(ConfigError) as e:
        PackLoop(prepare_engine(cfgs["c0"]), "a", cfgs)
    assert len(e.value.problems) == 2
    assert "candidates differ in micro_batch_size" in e.value.problems[0]
    assert "pack candidate 'c1': packs train prompt-tuning candidates of one new task 'a'" in e.value.problems[1]


def test_a_candidate_whose_examples_do_not_fit_is_left_out_with_its_error(tmp_path, tiny_gpt2_path):
    cfgs = {n: candidate_config(tmp_path, tiny_gpt2_path, n, steps=1) for n in ("c0", "big")}
    pack = PackLoop(prepare_engine(cfgs["c0"]), "a", cfgs)
    assert list(pack.candidates) == ["c0"] and list(pack.failed) == ["big"]
    assert pack.failed["big"].problems[0].startswith(
        "model.data.train_ds: 0 usable training examples for new tasks ['big']")
    assert pack.engine.model.bank.names == ["c0"]
    pack.step()
    assert pack.candidate_steps == 1
    with pytest.raises(ConfigError, match="0 usable training examples"):
        PackLoop(prepare_engine(cfgs["c0"]), "a", {"big": cfgs["big"]})


def test_two_streams_run_two_candidates_at_once_each_on_half_the_threads(tmp_path, tiny_gpt2_path, monkeypatch):
    import threading

    import promptray.platform.train.pack as pack_mod

    cfgs = {n: candidate_config(tmp_path, tiny_gpt2_path, n, steps=3) for n in ("c0", "c1")}
    pack = PackLoop(prepare_engine(cfgs["c0"]), "a", cfgs, streams=2)
    together, seen, real = threading.Barrier(2, timeout=30), [], pack_mod.accumulate_gradients

    def passes(*args):
        together.wait()  # both candidates are inside their passes at the same time (else: BrokenBarrierError)
        seen.append((threading.get_ident(), torch.get_num_threads()))
        return real(*args)
    monkeypatch.setattr(pack_mod, "accumulate_gradients", passes)
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        assert set(pack.step()) == {"c0", "c1"}
        assert torch.get_num_threads() == 4  # restored
    finally:
        torch.set_num_threads(before)
    assert len({t for t, _ in seen}) == 2 and {n for _, n in seen} == {2}
    pack.step()  # the same two threads again: started once per pack
    assert len({t for t, _ in seen}) == 2 and len(seen) == 4
    pack.close()
    assert pack._pool is None

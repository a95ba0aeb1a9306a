"""One search trial: a real engine training run (no publishing) reporting the objective to Ray Tune at each
validation, so ASHA can stop it early; the prompts of its best validation are saved in its own run dir."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from promptray.jobs.search_space import trial_config
from promptray.platform.config import PromptLearningConfig, load_config
from promptray.platform.engine import Engine
from promptray.platform.generation import GenerationParams
from promptray.platform.inference import InferenceEngine, exact_match, predict, prepare
from promptray.platform.train_loop import StepInfo, TrainLoop
from promptray.platform.trainer import prepare_engine

BEST_PROMPTS = "best_prompts.pt"


def trial_dir(trials_root: str, trial_id: str) -> Path:
    return Path(trials_root) / trial_id


def run_trial(choice: dict[str, Any], base: dict, tasks: list[str], data: dict, trials_root: str) -> None:
    """The function trainable (bound with tune.with_parameters)."""
    from ray import tune

    out = trial_dir(trials_root, tune.get_context().get_trial_id())
    raw = trial_config(base, tasks, choice, str(out))
    raw["model"]["data"].update(data)
    cfg = load_config(raw)
    search = base["search"]
    loop = TrainLoop(cfg, prepare_engine(cfg), progress=False)
    reporter = _Reporter(cfg, loop.engine, search["metric"], int(search.get("tokens_to_generate", 8)), out)
    loop.run(reporter)


class _Reporter:
    """The loop's per-step callback: at each validation, the objective to Tune and the best prompts to disk."""

    def __init__(self, cfg: PromptLearningConfig, engine: Engine, metric: str, tokens: int, out: Path):
        self.cfg, self.engine, self.metric, self.tokens, self.out = cfg, engine, metric, tokens, out
        self.best: Optional[float] = None
        self.examples = None

    def __call__(self, info: StepInfo) -> None:
        from ray import tune

        rec = info.record
        if not rec or "val_loss" not in rec:
            return
        metrics = {"val_loss": rec["val_loss"], "step": info.step, "total_steps": info.total_steps}
        if self.metric == "val_accuracy":
            metrics["val_accuracy"] = self._accuracy()
        value = metrics[self.metric]
        better = self.best is None or (value < self.best if self.metric == "val_loss" else value > self.best)
        if better:
            self.best = value
            self.out.mkdir(parents=True, exist_ok=True)
            torch.save(self.engine.model.bank.export(), self.out / BEST_PROMPTS)
        tune.report(metrics)

    def _accuracy(self) -> float:
        e = self.engine
        ie = InferenceEngine(e.model, e.tokenizer, {n: e.templates[n] for n in e.new_tasks}, {}, e.fingerprint)
        if self.examples is None:
            d = self.cfg.model.data
            self.examples = prepare(ie, d.validation_ds, self.tokens, d.add_bos)
        e.model.eval()
        try:
            preds = predict(ie, self.examples, GenerationParams(tokens_to_generate=self.tokens),
                            batch_size=self.cfg.model.micro_batch_size)
        finally:
            e.model.train()
        hits = [bool(exact_match(p, x.reference)) for p, x in zip(preds, self.examples)]
        return round(sum(hits) / max(1, len(hits)), 5)

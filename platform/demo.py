"""`promptray demo --in-process`: the engine alone, in one process: prompt-tune the bundled smollm2-135m on
movie-review sentiment, p-tune a second task into the same table (continual learning), score zero-shot vs tuned
held-out accuracy (greedy generation, normalized exact match of the label) and run one mixed-task batch.

The demo's configs, examples and figure are defined here once; `promptray demo` without `--in-process` runs the
same two tasks as Ray jobs and serves them (jobs/demo.py).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

from promptray.platform.config.schema import load_config
from promptray.platform.data.demo_data import movie_sentiment, trec_questions, write_splits
from promptray.platform.generation.decode import GenerationParams
from promptray.platform.generation.inference import exact_match, load_inference_engine, predict, prepare, strip_virtual
from promptray.platform.model.devices import resolve_device
from promptray.platform.train.metrics import draw_learning_curve, read_metrics
from promptray.platform.train.trainer import train

SENTIMENT = {"taskname": "sentiment", "prompt_template": "<|VIRTUAL_PROMPT_0|> Review: {sentence}\nSentiment: {label}",
             "total_virtual_tokens": 20, "virtual_token_splits": [20], "truncate_field": "sentence",
             "answer_only_loss": True, "answer_field": "label"}
QUESTIONS = {"taskname": "question_type",
             "prompt_template": "<|VIRTUAL_PROMPT_0|> Question: {question}\n<|VIRTUAL_PROMPT_1|> Type: {label}",
             "total_virtual_tokens": 8, "virtual_token_splits": [6, 2], "truncate_field": "question",
             "answer_only_loss": True, "answer_field": "label"}
TASK_FIELDS = {"sentiment": "sentence", "question_type": "question"}  # each task's input field
N_VAL, N_TEST_SPLIT = 200, 400  # the fixed held-out splits written for both tasks
MAX_ANSWER_TOKENS = 4  # the labels are one or two words
# inputs of both tasks that the demo answers in one mixed batch
MIXED_RECORDS = ({"taskname": "sentiment", "sentence": "A gorgeous, moving film with a wonderful cast."},
                 {"taskname": "question_type", "question": "Who wrote the novel Moby Dick ?"},
                 {"taskname": "sentiment", "sentence": "Dull, overlong and painfully unfunny."},
                 {"taskname": "question_type", "question": "How many miles is it from London to Paris ?"},
                 {"taskname": "sentiment", "sentence": "An unexpectedly funny and warm story."},
                 {"taskname": "question_type", "question": "What does NASA stand for ?"})


def demo_data(out: Path) -> dict[str, dict[str, Path]]:
    """The demo's train / validation / test splits of both tasks as .jsonl under out/data (fixed, seeded):
    {"sentiment": {"train": path, ...}, "question_type": {...}}."""
    return {"sentiment": write_splits("sentiment", movie_sentiment(), out / "data", n_val=N_VAL, n_test=N_TEST_SPLIT),
            "question_type": write_splits("questions", trec_questions(), out / "data", n_val=N_VAL,
                                          n_test=N_TEST_SPLIT)}


def sentiment_config(out: Path, data: dict[str, Path], steps: int, model: str, val_batches: int = 25) -> dict:
    """The demo's first run as a config dict: prompt tuning of task "sentiment" (text init), bf16, into
    `out`/prompt_table, `steps` steps of 8 examples, validation on `val_batches` batches 4 times; metrics and
    learning curve in `out`/sentiment."""
    return {"name": "demo_sentiment",
            "trainer": {"max_steps": steps, "val_check_interval": max(1, steps // 4), "limit_val_batches": val_batches,
                        "log_every_n_steps": max(1, min(5, steps // 10)), "precision": "bf16",
                        "gradient_clip_val": 1.0},
            "exp_manager": {"explicit_log_dir": str(out / "sentiment")},
            "model": {"seed": 1234, "nemo_path": str(out / "prompt_table"), "virtual_prompt_style": "prompt-tuning",
                      "language_model_path": model, "encoder_seq_length": 256,
                      "global_batch_size": 8, "micro_batch_size": 8, "new_tasks": ["sentiment"],
                      "task_templates": [SENTIMENT],
                      "prompt_tuning": {"new_prompt_init_methods": ["text"], "new_prompt_init_text": [
                          "Classify the sentiment of this movie review as positive or negative"]},
                      "data": {"train_ds": [str(data["train"])], "validation_ds": [str(data["validation"])]},
                      "optim": {"name": "adamw", "lr": 3e-2, "weight_decay": 0.0,
                                "sched": {"name": "CosineAnnealing", "warmup_steps": min(10, steps // 5),
                                          "min_lr": 3e-3}}}}


def questions_config(out: Path, data: dict[str, Path], steps: int, model: str, val_batches: int = 25) -> dict:
    """The demo's second run: p-tuning of "question_type" into the same table, "sentiment" restored frozen;
    metrics and learning curve in `out`/question_type."""
    cfg = sentiment_config(out, data, steps, model, val_batches)
    cfg["name"] = "demo_question_type"
    cfg["exp_manager"] = {"explicit_log_dir": str(out / "question_type")}
    cfg["model"].update({"virtual_prompt_style": "p-tuning", "restore_path": str(out / "prompt_table"),
                         "existing_tasks": ["sentiment"], "new_tasks": ["question_type"],
                         "task_templates": [SENTIMENT, QUESTIONS], "p_tuning": {"num_layers": 2, "dropout": 0.0},
                         "prompt_tuning": {}})
    cfg["model"]["optim"].update({"lr": 3e-3, "sched": {"name": "CosineAnnealing", "warmup_steps": min(10, steps // 5),
                                                        "min_lr": 3e-4}})
    return cfg


def accuracy(engine, examples, params, batch_size: int = 16, progress: bool = True,
             desc: str = "generating") -> float:
    """Share (0-1) of `examples` whose generated text exactly matches the reference (normalized); `desc`
    labels the progress bar."""
    preds = predict(engine, examples, params, batch_size, progress=progress, desc=desc)
    return sum(bool(exact_match(p, e.reference)) for p, e in zip(preds, examples)) / max(1, len(examples))


def held_out(engine, test_file: Path, n: int, zero_shot: bool = False) -> list:
    """The first `n` examples of a task's test split, encoded for generation (without virtual tokens when
    `zero_shot`: the template's text alone, the baseline)."""
    examples = prepare(engine, [test_file], MAX_ANSWER_TOKENS)[:n]
    return strip_virtual(examples) if zero_shot else examples


def run_demo(out_dir: str | Path = "runs/demo", steps: int = 150, question_steps: int = 100,
             n_test: int = 400, model: str = "smollm2-135m", progress: bool = True, val_batches: int = 25) -> dict:
    """`promptray demo --in-process`: tune two tasks into one table (continual learning), report zero-shot and
    tuned held-out accuracy on `n_test` sentiment and `n_test // 2` question examples, and one mixed-task batch;
    the summary goes to out_dir/demo_result.json, the figure to out_dir/demo.png."""
    out = Path(out_dir)
    t0 = time.time()
    data = demo_data(out)
    print(f"[1/4] prompt tuning 'sentiment' ({steps} steps of 8 movie reviews) on {model}")
    first = train(load_config(sentiment_config(out, data["sentiment"], steps, model, val_batches)), progress=progress)
    print(f"[2/4] p-tuning 'question_type' into the same table, 'sentiment' stays frozen ({question_steps} steps)")
    second = train(load_config(questions_config(out, data["question_type"], question_steps, model, val_batches)),
                   progress=progress)
    print("[3/4] held-out accuracy (greedy generation, exact label match)")
    engine = load_inference_engine(str(out / "prompt_table"), precision="bf16", device=resolve_device("auto"))
    params = GenerationParams(max_new_tokens=MAX_ANSWER_TOKENS, greedy=True)
    scores = {}
    for name, n in (("sentiment", n_test), ("question_type", n_test // 2)):
        tuned = held_out(engine, data[name]["test"], n)
        scores[name] = {"n_test": len(tuned),
                        "zero_shot": accuracy(engine, held_out(engine, data[name]["test"], n, zero_shot=True),
                                              params, progress=progress, desc=f"{name} zero-shot"),
                        "tuned": accuracy(engine, tuned, params, progress=progress, desc=f"{name} tuned")}
        print(f"      {name:14s} zero-shot {scores[name]['zero_shot']:.1%}  ->  tuned {scores[name]['tuned']:.1%}"
              f"  ({len(tuned)} held-out examples)")
    print("[4/4] one mixed batch: both tasks, 20 and 8 virtual tokens, in one forward pass")
    curves = {name: (read_metrics(r.metrics_path), r.best_step)
              for name, r in (("sentiment", first), ("question_type", second))}
    result = {"mode": "in-process", "model": model, "steps": {"sentiment": steps, "question_type": question_steps},
              "accuracy": scores, "mixed_batch": mixed_batch(engine, params), "table": str(out / "prompt_table"),
              "versions": {**first.versions, **second.versions},
              "learning_curves": [str(first.plot_path), str(second.plot_path)],
              "figure": str(write_figure(out / "demo.png", curves, scores)), "seconds": round(time.time() - t0, 1)}
    (out / "demo_result.json").write_text(json.dumps(result, indent=2))
    print(f"prompt table: {result['table']}  figure: {result['figure']}")
    print(f"done in {result['seconds']:.0f} s; summary in {out / 'demo_result.json'}")
    return result


def mixed_batch(engine, params: GenerationParams) -> list[dict]:
    """MIXED_RECORDS generated in one batch; each record with its prediction."""
    records = [dict(r) for r in MIXED_RECORDS]
    examples = prepare(engine, records, params.max_new_tokens)
    preds = predict(engine, examples, params, batch_size=len(examples))
    rows = []
    for r, p in zip(records, preds):
        print(f"      [{r['taskname']:13s}] {r[TASK_FIELDS[r['taskname']]]!r} -> {p.strip()!r}")
        rows.append({**r, "prediction": p.strip()})
    return rows


def write_figure(path: Path, curves: dict[str, tuple[list[dict], Optional[int]]],
                 scores: dict[str, dict]) -> Path:
    """One PNG: each task's learning curve (`curves`: task -> (metrics records, published step), drawn by
    draw_learning_curve) and a bar chart of zero-shot vs tuned held-out accuracy per task (`scores`: task ->
    {"zero_shot", "tuned" (0-1), "n_test"})."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves) + 1, figsize=(5.2 * (len(curves) + 1), 4.2), dpi=110)
    try:
        for ax, (task, (records, step)) in zip(axes, curves.items()):
            draw_learning_curve(ax, records, step, title=f"{task}: learning curve")
        _accuracy_bars(axes[-1], scores)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def _accuracy_bars(ax, scores: dict[str, dict]) -> None:
    names, width = list(scores), 0.38
    xs = range(len(names))
    for offset, key, label, color in ((-width / 2, "zero_shot", "zero-shot", "tab:gray"),
                                      (width / 2, "tuned", "tuned prompt", "tab:green")):
        values = [100 * scores[n][key] for n in names]
        bars = ax.bar([x + offset for x in xs], values, width, label=label, color=color)
        ax.bar_label(bars, fmt="%.1f%%", fontsize=8)
    ax.set_xticks(list(xs), [f"{n}\n({scores[n]['n_test']} held out)" for n in names])
    ax.set_ylim(0, 105)
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title("zero-shot vs tuned")
    ax.legend(fontsize=8, loc="upper left")

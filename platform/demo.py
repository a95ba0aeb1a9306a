"""`promptray demo`: prompt-tune the bundled smollm2-135m on movie-review sentiment, then p-tune a second
task into the same table (continual learning), and run one mixed-task batch from the table.

Prints zero-shot vs tuned held-out accuracy (greedy generation, normalized exact match of the label).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from promptray.platform.config.schema import load_config
from promptray.platform.data.demo_data import movie_sentiment, trec_questions, write_splits
from promptray.platform.generation.decode import GenerationParams
from promptray.platform.generation.inference import exact_match, load_inference_engine, predict, prepare, strip_virtual
from promptray.platform.model.devices import resolve_device
from promptray.platform.train.trainer import train

SENTIMENT = {"taskname": "sentiment", "prompt_template": "<|VIRTUAL_PROMPT_0|> Review: {sentence}\nSentiment: {label}",
             "total_virtual_tokens": 20, "virtual_token_splits": [20], "truncate_field": "sentence",
             "answer_only_loss": True, "answer_field": "label"}
QUESTIONS = {"taskname": "question_type",
             "prompt_template": "<|VIRTUAL_PROMPT_0|> Question: {question}\n<|VIRTUAL_PROMPT_1|> Type: {label}",
             "total_virtual_tokens": 8, "virtual_token_splits": [6, 2], "truncate_field": "question",
             "answer_only_loss": True, "answer_field": "label"}


def sentiment_config(out: Path, data: dict[str, Path], steps: int, model: str) -> dict:
    """The demo's first run as a config dict: prompt tuning of task "sentiment" (text init), bf16, into
    `out`/prompt_table, `steps` steps of 8 examples."""
    return {"name": "demo_sentiment",
            "trainer": {"max_steps": steps, "val_check_interval": max(1, steps // 4), "limit_val_batches": 25,
                        "log_every_n_steps": 5, "precision": "bf16", "gradient_clip_val": 1.0},
            "exp_manager": {"exp_dir": str(out / "runs")},
            "model": {"seed": 1234, "nemo_path": str(out / "prompt_table"), "virtual_prompt_style": "prompt-tuning",
                      "language_model_path": model, "encoder_seq_length": 256,
                      "global_batch_size": 8, "micro_batch_size": 8, "new_tasks": ["sentiment"],
                      "task_templates": [SENTIMENT],
                      "prompt_tuning": {"new_prompt_init_methods": ["text"], "new_prompt_init_text": [
                          "Classify the sentiment of this movie review as positive or negative"]},
                      "data": {"train_ds": [str(data["train"])], "validation_ds": [str(data["validation"])]},
                      "optim": {"name": "adamw", "lr": 3e-2, "weight_decay": 0.0,
                                "sched": {"name": "CosineAnnealing", "warmup_steps": 10, "min_lr": 3e-3}}}}


def questions_config(out: Path, data: dict[str, Path], steps: int, model: str) -> dict:
    """The demo's second run: p-tuning of "question_type" into the same table, "sentiment" restored frozen."""
    cfg = sentiment_config(out, data, steps, model)
    cfg["name"] = "demo_question_type"
    cfg["model"].update({"virtual_prompt_style": "p-tuning", "restore_path": str(out / "prompt_table"),
                         "existing_tasks": ["sentiment"], "new_tasks": ["question_type"],
                         "task_templates": [SENTIMENT, QUESTIONS], "p_tuning": {"num_layers": 2, "dropout": 0.0},
                         "prompt_tuning": {}})
    cfg["model"]["optim"].update({"lr": 3e-3, "sched": {"name": "CosineAnnealing", "warmup_steps": 10,
                                                        "min_lr": 3e-4}})
    return cfg


def accuracy(engine, examples, params, batch_size: int = 16) -> float:
    """Share (0-1) of `examples` whose generated text exactly matches the reference (normalized)."""
    preds = predict(engine, examples, params, batch_size, progress=True)
    return sum(bool(exact_match(p, e.reference)) for p, e in zip(preds, examples)) / max(1, len(examples))


def run_demo(out_dir: str | Path = "runs/demo", steps: int = 150, question_steps: int = 100,
             n_test: int = 400, model: str = "smollm2-135m", progress: bool = True) -> dict:
    """`promptray demo`: tune two tasks into one table (continual learning), report zero-shot and tuned
    held-out accuracy and one mixed-task batch; the summary is also written to out_dir/demo_result.json."""
    out = Path(out_dir)
    t0 = time.time()
    sent = write_splits("sentiment", movie_sentiment(), out / "data", n_val=200, n_test=n_test)
    ques = write_splits("questions", trec_questions(), out / "data", n_val=200, n_test=n_test)
    print(f"[1/4] prompt tuning 'sentiment' ({steps} steps of 8 movie reviews) on {model}")
    first = train(load_config(sentiment_config(out, sent, steps, model)), progress=progress)
    print(f"[2/4] p-tuning 'question_type' into the same table, 'sentiment' stays frozen ({question_steps} steps)")
    second = train(load_config(questions_config(out, ques, question_steps, model)), progress=progress)
    print("[3/4] held-out accuracy (greedy generation, exact label match)")
    engine = load_inference_engine(str(out / "prompt_table"), precision="bf16", device=resolve_device("auto"))
    params = GenerationParams(max_new_tokens=4, greedy=True)
    result = {"model": model, "steps": steps, "n_test": n_test}
    for name, data, n in (("sentiment", sent, n_test), ("question_type", ques, n_test // 2)):
        examples = prepare(engine, [data["test"]], params.max_new_tokens)[:n]
        result[name] = {"zero_shot": accuracy(engine, strip_virtual(examples), params),
                        "tuned": accuracy(engine, examples, params)}
        print(f"      {name:14s} zero-shot {result[name]['zero_shot']:.1%}  ->  tuned {result[name]['tuned']:.1%}"
              f"  ({n} held-out examples)")
    print("[4/4] one mixed batch: both tasks, 20 and 8 virtual tokens, in one forward pass")
    result["mixed_batch"] = mixed_batch(engine, params)
    result.update({"table": str(out / "prompt_table"), "versions": {**first.versions, **second.versions},
                   "learning_curves": [str(first.plot_path), str(second.plot_path)],
                   "seconds": round(time.time() - t0, 1)})
    (out / "demo_result.json").write_text(json.dumps(result, indent=2))
    print(f"prompt table: {result['table']}  learning curves: {', '.join(result['learning_curves'])}")
    print(f"done in {result['seconds']:.0f} s; summary in {out / 'demo_result.json'}")
    return result


def mixed_batch(engine, params: GenerationParams) -> list[dict]:
    """Four inputs of both tasks generated in one batch; each record with its prediction."""
    records = [{"taskname": "sentiment", "sentence": "A gorgeous, moving film with a wonderful cast."},
               {"taskname": "question_type", "question": "Who wrote the novel Moby Dick ?"},
               {"taskname": "sentiment", "sentence": "Dull, overlong and painfully unfunny."},
               {"taskname": "question_type", "question": "How many miles is it from London to Paris ?"}]
    examples = prepare(engine, records, params.max_new_tokens)
    preds = predict(engine, examples, params, batch_size=len(examples))
    rows = []
    for r, p in zip(records, preds):
        text = r.get("sentence") or r.get("question")
        print(f"      [{r['taskname']:13s}] {text!r} -> {p.strip()!r}")
        rows.append({**r, "prediction": p.strip()})
    return rows

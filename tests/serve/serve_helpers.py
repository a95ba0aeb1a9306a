"""Prompts, templates and inputs shared by the serving tests (not a test module; unique name, unlike conftest)."""

from __future__ import annotations

import time

import requests
import torch

from promptray.platform.ports import free_ports
from promptray.platform.table.table import TaskPrompt

API_KEY = "test-key-7f3a"
TEMPLATES = {
    "sent": {"prompt_template": "<|VIRTUAL_PROMPT_0|> Review: {text} Sentiment:{label}", "splits": [3],
             "answer_field": "label"},
    "qa": {"prompt_template": "<|VIRTUAL_PROMPT_0|> Context: {context}<|VIRTUAL_PROMPT_1|> Question: {question} "
                              "Answer:{answer}", "splits": [4, 4], "answer_field": "answer"},
    "tr": {"prompt_template": "<|VIRTUAL_PROMPT_0|> Translate: {src} =", "splits": [15], "answer_field": None},
}


def make_prompt(name: str, fingerprint, hidden: int, seed: int, spec: dict | None = None) -> TaskPrompt:
    spec = spec or TEMPLATES[name]
    n = sum(spec["splits"])
    template = {"taskname": name, "prompt_template": spec["prompt_template"], "total_virtual_tokens": n,
                "virtual_token_splits": spec["splits"], "answer_field": spec["answer_field"]}
    emb = torch.randn(n, hidden, generator=torch.Generator().manual_seed(seed)) * 2  # (n, H)
    return TaskPrompt(taskname=name, embeddings=emb, template=template, style="prompt-tuning", base_model=fingerprint)


INPUTS_FOR_UNITS = [
    {"taskname": "sent", "fields": {"text": "A wonderful, moving film."}},
    {"taskname": "qa", "fields": {"context": "The station is north.", "question": "Where?"}},
    {"taskname": "tr", "fields": {"src": "good morning"}},
]


def run(engine, items, params) -> list[str]:
    """The texts a ServeEngine generates for `items` ({taskname, fields}) decoded as one batch."""
    prepared = [engine.encode(x["taskname"], x["fields"], None, params) for x in items]
    texts = [""] * len(prepared)
    for events in engine.stream(prepared):
        for i, e in enumerate(events):
            texts[i] += e.text if e is not None else ""
    return texts


def free_port() -> int:
    """One free loopback port (promptray's one port helper)."""
    return free_ports(1)[0]


def wait_ready(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not come up in {timeout}s")

"""Serving's use of the decode core (platform/generation/decode.py): a request's `SamplingParams` as the core's
per-row parameters, each seeded request with its own generator, text reported as it grows (`request_row`, what
the replica's scheduler runs; `stream_decode`, one static batch)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Optional

import torch

from promptray.platform.data.dataset import Example
from promptray.platform.generation.decode import DecodeRow, Prefill, RowEvent, decode_steps
from promptray.platform.generation.params import GenerationParams
from promptray.platform.model.prompt_model import PromptLearningModel
from promptray.serve.schemas import SamplingParams


def generation_params(p: SamplingParams) -> GenerationParams:
    """The core's parameters of one request (OpenAI names -> Hugging Face's)."""
    return GenerationParams(max_new_tokens=p.max_tokens, greedy=p.is_greedy, temperature=p.temperature,
                            top_k=p.top_k, top_p=p.top_p, repetition_penalty=p.repetition_penalty, seed=p.seed,
                            stop=list(p.stop), min_new_tokens=p.min_tokens, logprobs=p.logprobs)


def request_row(p: SamplingParams, eos_id: int, decode: Callable[[list[int]], str],
                device: torch.device) -> DecodeRow:
    """The decode core's row of one request: its parameters, its own generator when seeded, text as it grows."""
    gen = torch.Generator(device).manual_seed(p.seed) if p.seed is not None else None
    return DecodeRow(generation_params(p), eos_id, decode=decode, generator=gen)


def stream_decode(model: PromptLearningModel, examples: Sequence[Example], params: Sequence[SamplingParams],
                  prefill: Prefill, pad_id: int, eos_id: int,
                  decode: Callable[[list[int]], str]) -> Iterator[list[Optional[RowEvent]]]:
    """Per step, one event (or None) per row; a row's last event has its finish_reason set."""
    rows = [request_row(p, eos_id, decode, model.device) for p in params]
    return decode_steps(model, examples, rows, pad_id, prefill)

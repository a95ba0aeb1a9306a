"""The HTTP API's request and response models, and the server's settings (pydantic; no Ray, no torch).

Field names of the generation parameters follow the OpenAI API where it has them: `max_tokens`,
`temperature` (0 means greedy), `top_p`, `stop`, `seed`, `stream`; plus `greedy` (bool shorthand), `top_k`
and `repetition_penalty`.

Types are strict (JSON types, not Python's coercions): a boolean is not a number (`"temperature": true` is a
422), a string is neither a number nor a boolean (`"greedy": "yes"`, `"temperature": "nan"`), an integer
parameter takes no fraction, and NaN/infinity are refused. `null` for an optional parameter means its default,
as in OpenAI's API (`"max_tokens": null`). A rule between two parameters is reported under the later one
(`min_tokens` against `max_tokens`, `logprobs` against `stream`), so every error names its `param`.
"""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, field_validator, model_validator
from pydantic_core import PydanticCustomError

from promptray.platform.generation.params import RANGES as R

MAX_STOP = 8
MAX_LOGPROBS = 5  # OpenAI's limit for the completions route
FieldValue = Union[str, StrictInt, StrictFloat, StrictBool]
PROMPT_FORMS = ("give a string, a JSON object of the task's input fields, or a non-empty list of them")


class SamplingParams(BaseModel):
    """How to generate; every request carries its own (rows of one batch may differ). OpenAI's names, with the
    engine's ranges (`RANGES`, platform/generation/params.py) narrowed by this server's caps; serve/decoding.py
    maps them onto the engine's `GenerationParams`."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: StrictInt = Field(32, **R["max_new_tokens"].bounds(le=4096),
                                  description="most tokens to generate per input")
    greedy: Optional[StrictBool] = Field(None, description="shorthand: true = always the most likely token")
    temperature: StrictFloat = Field(1.0, **R["temperature"].bounds(), allow_inf_nan=False,
                                       description="0 means greedy")
    top_k: StrictInt = Field(0, **R["top_k"].bounds(), description="0: no top-k filtering")
    top_p: StrictFloat = Field(1.0, **R["top_p"].bounds(), allow_inf_nan=False, description="1: no nucleus filtering")
    repetition_penalty: StrictFloat = Field(1.0, **R["repetition_penalty"].bounds(), allow_inf_nan=False)
    seed: Optional[StrictInt] = Field(None, ge=0, lt=2**63, description="sampling seed of this request")
    stop: list[str] = Field(default_factory=list, description="strings that end a generation (not returned)")
    stream: StrictBool = Field(False, description="server-sent events, one per new piece of text")
    min_tokens: StrictInt = Field(0, **R["min_new_tokens"].bounds(le=4096),
                                  description="EOS and stop strings do not end a generation "
                                  "before this many tokens (vLLM's min_tokens, NeMo's min_tokens_to_generate)")
    logprobs: Optional[StrictInt] = Field(None, **R["logprobs"].bounds(le=MAX_LOGPROBS),
                                          description="return each generated "
                                          "token's log-probability and this many most likely alternatives "
                                          "(OpenAI's legacy completions shape); not with stream")

    @field_validator("*", mode="before")
    @classmethod
    def _null_is_default(cls, v, info):
        """`null` for a parameter that has a default means the default (OpenAI's convention)."""
        field = cls.model_fields[info.field_name]
        if v is None and not field.is_required():
            return field.get_default(call_default_factory=True)
        return v

    @field_validator("stop", mode="before")
    @classmethod
    def _one_or_many(cls, v):
        return [v] if isinstance(v, str) else v

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, v: list[str]) -> list[str]:
        if len(v) > MAX_STOP or any(not s for s in v):
            raise ValueError(f"give at most {MAX_STOP} non-empty stop strings, got {v!r}")
        return v

    @field_validator("min_tokens")
    @classmethod
    def _min_within_max(cls, v: int, info) -> int:
        max_tokens = info.data.get("max_tokens")
        if max_tokens is not None and v > max_tokens:
            raise ValueError(f"min_tokens ({v}) must not exceed max_tokens ({max_tokens})")
        return v

    @field_validator("logprobs")
    @classmethod
    def _not_streamed(cls, v: Optional[int], info) -> Optional[int]:
        if v is not None and info.data.get("stream"):
            raise ValueError("logprobs is not supported with stream=true; ask without streaming")
        return v

    @property
    def is_greedy(self) -> bool:
        return bool(self.greedy) if self.greedy is not None else self.temperature == 0


class TaskInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    taskname: str = Field(..., min_length=1, max_length=128)
    fields: dict[str, FieldValue] = Field(default_factory=dict, description="the template's data fields")
    version: Optional[str] = Field(None, description="pin a published version (default: the current one)")


class GenerateRequest(SamplingParams):
    """`{"taskname": ..., "fields": {...}}` or `{"inputs": [...]}`, plus generation parameters."""

    taskname: Optional[str] = Field(None, min_length=1, max_length=128)
    fields: Optional[dict[str, FieldValue]] = None
    version: Optional[str] = None
    inputs: Optional[list[TaskInput]] = Field(None, min_length=1, max_length=256)

    @model_validator(mode="after")
    def _one_form(self) -> GenerateRequest:
        if (self.inputs is None) == (self.taskname is None):
            raise ValueError("give either taskname (+ fields, version) for one input, or inputs: [...] for many")
        if self.inputs is not None and (self.fields is not None or self.version is not None):
            param = "fields" if self.fields is not None else "version"
            raise PydanticCustomError("misplaced", "belongs inside each item of inputs, not at the top level",
                                      {"param": param})
        return self

    def items(self) -> list[TaskInput]:
        if self.inputs is not None:
            return self.inputs
        return [TaskInput(taskname=self.taskname, fields=self.fields or {}, version=self.version)]


# OpenAI completions parameters this server does not honour, with the one value that means "not used"
# (https://platform.openai.com/docs/api-reference/completions/create). Any other value is a 422 naming it.
UNSUPPORTED_OPENAI = {"best_of": 1, "n": 1, "suffix": None, "presence_penalty": 0, "frequency_penalty": 0,
                      "logit_bias": None, "stream_options": None}


class CompletionRequest(SamplingParams):
    """OpenAI-compatible: `model` is the taskname, `prompt` fills the template's input fields (see app.py):
    a string for a task with one input field; for several, a JSON object of them (or that object JSON-encoded
    as a string); or a list of such prompts.

    Unknown keys are a 422. OpenAI parameters we do not implement are accepted only at their neutral value
    (`UNSUPPORTED_OPENAI`: `n`/`best_of` 1, penalties 0, no `suffix`/`logit_bias`/`stream_options`);
    `user` is accepted as the caller's identifier and otherwise ignored."""

    model: str = Field(..., min_length=1, max_length=128)
    prompt: Union[str, dict[str, FieldValue], list[Union[str, dict[str, FieldValue]]]]
    max_tokens: StrictInt = Field(16, ge=1, le=4096)
    user: Optional[str] = Field(None, max_length=256, description="the caller's identifier (not used)")
    n: Optional[StrictInt] = Field(None, description="only 1 is supported")
    best_of: Optional[StrictInt] = Field(None, description="only 1 is supported")
    suffix: Optional[str] = Field(None, description="not supported")
    presence_penalty: Optional[StrictFloat] = Field(None, allow_inf_nan=False,
                                                    description="only 0 is supported (see repetition_penalty)")
    frequency_penalty: Optional[StrictFloat] = Field(None, allow_inf_nan=False,
                                                     description="only 0 is supported (see repetition_penalty)")
    logit_bias: Optional[dict[str, float]] = Field(None, description="not supported")
    stream_options: Optional[dict] = Field(None, description="not supported")
    echo: StrictBool = Field(False, description="prepend the prompt as the model read it (the template filled "
                             "with `prompt`, virtual tokens left out); with logprobs, its tokens' log-probabilities "
                             "too")

    @field_validator(*UNSUPPORTED_OPENAI)
    @classmethod
    def _neutral_only(cls, v, info):
        neutral = UNSUPPORTED_OPENAI[info.field_name]
        if v is not None and v != neutral and not (neutral is None and v == {}):
            allowed = "omit it" if neutral is None else f"omit it or send {neutral}"
            raise ValueError(f"{info.field_name}={v!r} is not supported by this server; {allowed}")
        return v

    @field_validator("prompt", mode="before")
    @classmethod
    def _text_prompts(cls, v):
        def one(x) -> bool:
            return isinstance(x, (str, dict))

        if one(v) or (isinstance(v, list) and v and all(one(x) for x in v)):
            return v
        raise ValueError(PROMPT_FORMS + " (token-id prompts are not supported)")

    def prompts(self) -> list[Union[str, dict]]:
        return list(self.prompt) if isinstance(self.prompt, list) else [self.prompt]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Logprobs(BaseModel):
    """OpenAI's legacy completions `logprobs`: per token of the text, its string, log-probability (None:
    nothing before it to predict it from), the most likely alternatives with the chosen one, and its offset."""

    tokens: list[str]
    token_logprobs: list[Optional[float]]
    top_logprobs: list[Optional[dict[str, float]]]
    text_offset: list[int]


class Completion(BaseModel):
    index: int
    taskname: str
    version: str
    text: str
    finish_reason: Literal["stop", "length"]
    truncated: bool = Field(False, description="the task's truncate_field was cut to fit the model's positions; "
                                               "usage.prompt_tokens counts the prompt as it was run")
    usage: Usage
    logprobs: Optional[Logprobs] = None


class GenerateResponse(BaseModel):
    completions: list[Completion]
    usage: Usage


class TaskInfo(BaseModel):
    name: str
    version: str
    virtual_tokens: int
    fields: list[str]
    input_fields: list[str]


class ServerSettings(BaseModel):
    """What one deployment serves and how (the `args` of the Serve config / `promptray serve` flags)."""

    model_config = ConfigDict(extra="forbid")

    table: str = Field(..., description="prompt table URI: a local path or s3://bucket/prefix")
    model: Optional[str] = Field(None, description="base model (default: the one the table's prompts name)")
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16, as in training
    accelerator: Literal["auto", "cpu", "gpu", "cuda"] = Field(
        "auto", description="auto: the replica's CUDA GPU when it has one (ray_actor_options num_gpus), else CPU")
    batching: Literal["continuous", "static"] = Field(
        "continuous", description="continuous: requests join and leave the running batch between decoding "
        "steps; static: a batch is formed when the last one has ended and runs until its longest row ends")
    max_batch_size: int = Field(16, ge=1, le=512, description="rows decoded together at most")
    batch_wait_timeout_s: float = Field(0.01, ge=0, le=5, allow_inf_nan=False,
                                        description="static batching: how long an empty batch waits to fill")
    max_prompt_tokens: int = Field(4096, ge=1, description="longest prompt (virtual tokens included) a request "
                                   "may have; a longer one is cut at its template's truncate_field, or is a 422 "
                                   "naming this limit when it has none")
    kv_budget_tokens: int = Field(65536, ge=1, description="KV-cache slots the running rows of a replica may "
                                  "hold: rows x the longest row's prompt + max_tokens")
    max_queue: int = Field(64, ge=1, description="requests waiting for room at most; beyond, a 503 with "
                           "Retry-After")
    prefill_chunk_tokens: int = Field(256, ge=1, description="prompt tokens prefilled per decoding step while "
                                      "other rows decode (longer prompts are prefilled in chunks)")
    threads: Optional[int] = Field(None, ge=1, le=256, description="torch threads of a replica, and the CPUs "
                                   "build_app reserves for it (ray_actor_options num_cpus); None: the CPUs Ray "
                                   "gave the replica (1 when build_app picks), for `promptray serve` the machine's "
                                   "cores shared among the replicas")
    prompt_cache_bytes: int = Field(256 * 2**20, ge=0, description="LRU bound of loaded prompts + prefix caches")
    refresh_s: float = Field(10.0, ge=0, allow_inf_nan=False,
                             description="how old the manifest may get before it is read again")
    prefix_cache: bool = True
    max_body_bytes: int = Field(1 * 2**20, ge=1024)
    api_keys_env: Optional[str] = Field("PROMPTRAY_API_KEYS", description="env var of comma-separated keys")
    api_keys_file: Optional[str] = Field(None, description="file with one API key per line")

    @model_validator(mode="after")
    def _budget_holds_a_prompt(self) -> ServerSettings:
        if self.kv_budget_tokens < self.max_prompt_tokens:
            raise ValueError(f"kv_budget_tokens ({self.kv_budget_tokens}) is below max_prompt_tokens "
                             f"({self.max_prompt_tokens}): prompts the cap allows could never run; raise "
                             "kv_budget_tokens or lower max_prompt_tokens")
        return self

"""The Ray Serve deployment: FastAPI ingress (OpenAPI at /docs), one base model per replica, every task.

Requests of any tasks share one running batch per replica (the task id travels with each row; no
`@serve.multiplexed`, which would split batches by task): the replica's scheduler
(platform/generation/scheduler.py, stepped in a thread by serve/runner.py) admits encoded inputs between
decoding steps and lets each go the moment it ends (EOS, stop string, max_tokens, client gone), streaming each
row's text back as it comes. `batching: static` keeps the classic batch instead (for comparison). A full
waiting queue is a 503 with Retry-After; `/metrics` (Prometheus) and `/healthz` show the scheduler's numbers.

`/v1/completions` (OpenAI-compatible): `model` names the task, `prompt` fills the template's input fields
(all template fields but the generated one): a string for a task with one input field (taken literally), a
JSON object of the fields for any task (`{"premise": "...", "hypothesis": "..."}`), or, for a task with
several, that object JSON-encoded as a string (what OpenAI clients that only send strings can do); a list
of such prompts for several completions.

`GET /v1/models` lists every task this replica can serve as an OpenAI model. Errors, on every route, are
OpenAI's error body (`serve/http.py`). A replica whose table has no task for its base model does not crash:
it answers every route (`/healthz` too) 503 with the reason, and `promptray serve` exits 2 with it.

`logprobs: k` (both routes, 0-5, not with `stream`) returns OpenAI's legacy completions `logprobs` object
per answer: each token of the text, its log-probability under the model (before sampling settings), the k
most likely alternatives plus the chosen token, and its text offset. `echo` (/v1/completions) prepends the
prompt as the model read it (the template filled in, virtual tokens left out); with logprobs its tokens
come first, each scored given all positions before it, virtual ones included (null only for a token at
position 0, as OpenAI's first token).
"""


import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Optional

import torch
from fastapi import Depends
from fastapi.responses import Response, StreamingResponse
from ray import serve

from promptray.platform.errors import PromptrayError
from promptray.platform.generation.scheduler import QueueFullError, RequestTooLargeError
from promptray.serve.auth import ApiKeys, BodyLimit
from promptray.serve.engine import Prepared, ServeEngine, input_fields
from promptray.serve.errors import (
    InputFieldError,
    InputTooLongError,
    RequestValidationFailed,
    ServerBusyError,
    ServerNotReadyError,
    UnknownTaskError,
)
from promptray.serve.http import make_api
from promptray.serve.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from promptray.serve.metrics import ReplicaMetrics
from promptray.serve.runner import SchedulerRunner, Ticket, merge_streams
from promptray.serve.schemas import (
    Completion,
    CompletionRequest,
    GenerateRequest,
    GenerateResponse,
    ServerSettings,
    TaskInfo,
    Usage,
)

log = logging.getLogger(__name__)
api = make_api(title="promptray", description="Soft-prompt serving: every task of a prompt table on one base model")
api.add_middleware(BodyLimit)


def _usage(prompt: int, completion: int) -> Usage:
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _sse(payload) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


def _prompt_fields(fields: list[str], prompt, param: str = "prompt") -> dict:
    """`prompt` as the fields of a task: a JSON object of them; for a task with one input field, also its
    text; for several, also that object JSON-encoded as a string. InputFieldError naming `param` otherwise."""
    if isinstance(prompt, dict):
        return prompt
    if len(fields) == 1:
        return {fields[0]: prompt}
    try:
        value = json.loads(prompt)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        example = json.dumps({f: "..." for f in fields})
        raise InputFieldError(f"this task has input fields {fields}: give prompt as a JSON object of them, e.g. "
                              f"{example} (or that object JSON-encoded as a string), or use /v1/generate",
                              param=param, input_fields=fields)
    return value


def encode_at(engine: ServeEngine, taskname: str, fields: dict, version: Optional[str], params,
              where: tuple[str, bool]):
    """`engine.encode`, with an InputFieldError's or InputTooLongError's `param` placed at `where` = (the body's
    place of the fields, whether a field's name goes under it): `fields.foo` becomes `inputs.1.fields.foo`, or
    `prompt.foo` for a JSON-object prompt; fields parsed from a string prompt name just `prompt` (or
    `prompt.2`); a too-long input names the place of its fields."""
    place, nested = where
    try:
        return engine.encode(taskname, fields, version, params)
    except (InputFieldError, InputTooLongError) as e:
        e.param = place + e.param.removeprefix("fields") if nested and e.param else place
        raise


def reserved_cpus() -> int:
    """The CPUs Ray reserved for this replica (ray_actor_options num_cpus), at least 1. (Defined before
    PromptServer: the deployment pickles the class, with the globals it uses, where it is decorated.)"""
    import ray

    return max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))


@serve.deployment(max_ongoing_requests=96, ray_actor_options={"num_cpus": 2})
@serve.ingress(api)
class PromptServer:
    """One replica: the engine (base model, task prompts), its scheduler and runner, and the HTTP routes."""

    def __init__(self, settings: dict):
        self.settings = ServerSettings.model_validate(settings)
        self.engine: Optional[ServeEngine] = None
        self.problem: Optional[str] = None  # why this replica cannot serve (then every route is a 503)
        try:
            self.engine = ServeEngine(self.settings)
        except PromptrayError as e:  # e.g. no task of the table fits the base model
            log.error("cannot serve: %s", e)
            self.problem = str(e)
        self.keys = ApiKeys.load(self.settings.api_keys_env, self.settings.api_keys_file)
        api.state.keys = self.keys
        api.state.max_body_bytes = self.settings.max_body_bytes
        torch.set_num_threads(self.settings.threads or reserved_cpus())
        self.runner: Optional[SchedulerRunner] = None
        self.metrics: Optional[ReplicaMetrics] = None
        if self.engine is not None:
            scheduler = self.engine.scheduler()
            self.runner, self.metrics = SchedulerRunner(scheduler), ReplicaMetrics(scheduler, self.engine.prefixes)

    def __del__(self):
        if getattr(self, "runner", None) is not None:
            self.runner.close()

    def startup_problem(self) -> Optional[str]:
        """Why this replica cannot serve, or None (`promptray serve` asks through the deployment handle)."""
        return self.problem

    def _ready(self) -> ServeEngine:
        if self.engine is None:
            raise ServerNotReadyError(f"this server cannot serve: {self.problem}")
        return self.engine

    async def _prepare(self, items: list[tuple[str, dict, Optional[str]]], params,
                       where: list[tuple[str, bool]]) -> list[Prepared]:
        """Encode every input; an input's field error names its place in the body as `param` (`where[i]`,
        see encode_at)."""
        engine = self._ready()
        return await asyncio.to_thread(lambda: [encode_at(engine, t, f, v, params, w)
                                                for (t, f, v), w in zip(items, where)])

    def _submit(self, prepared: list[Prepared]) -> list[Ticket]:
        """Queue every input of a request in the scheduler, all or none: ServerBusyError (503 with Retry-After)
        when they do not fit the waiting queue now, a 422 when they never could (too many in one request)."""
        try:
            return self.runner.submit([(p.example, self.engine.row(p)) for p in prepared])
        except QueueFullError as e:
            raise ServerBusyError(str(e), retry_after_s=e.retry_after_s) from None
        except RequestTooLargeError as e:
            raise RequestValidationFailed(str(e), param="inputs") from None

    async def _run(self, tickets: list[Ticket]) -> AsyncIterator[tuple[int, object]]:
        """(input index, RowEvent) as they come, over all inputs of a request; leaving early (the client went
        away) cancels the inputs still running."""
        try:
            async for i, event in merge_streams([self.runner.events(t) for t in tickets]):
                yield i, event
        finally:  # closed early: the inner generators may not be closed yet
            for t in tickets:
                self.runner.cancel(t)

    async def _collect(self, prepared: list[Prepared], echo: bool = False) -> list[Completion]:
        """Every input's whole answer; usage counts every generated token (an ending EOS or stop-string
        token included); `echo` prepends the prompt as the model read it (see ServeEngine.prompt_text)."""
        texts, last = [""] * len(prepared), [None] * len(prepared)
        async for i, e in self._run(self._submit(prepared)):
            texts[i] += e.text
            last[i] = e
        out = []
        for i, (p, e) in enumerate(zip(prepared, last)):
            logprobs = None
            if e.logprobs is not None:
                logprobs = await asyncio.to_thread(self.engine.logprobs, p, e.logprobs, echo)
            text = (await asyncio.to_thread(self.engine.prompt_text, p) if echo else "") + texts[i]
            out.append(Completion(index=i, taskname=p.task.taskname, version=p.task.version, text=text,
                                  finish_reason=e.finish_reason or "length", truncated=p.truncated,
                                  usage=_usage(p.prompt_tokens, e.generated), logprobs=logprobs))
        return out

    @api.post("/v1/generate", response_model=GenerateResponse)
    async def generate(self, req: GenerateRequest, _=Depends(ApiKeys.check)):
        places = ["fields"] if req.inputs is None else [f"inputs.{i}.fields" for i in range(len(req.inputs))]
        where = [(p, True) for p in places]
        prepared = await self._prepare([(x.taskname, x.fields, x.version) for x in req.items()], req, where)
        if req.stream:
            return StreamingResponse(self._stream_generate(prepared, self._submit(prepared)),
                                     media_type="text/event-stream")
        completions = await self._collect(prepared)
        total = _usage(sum(c.usage.prompt_tokens for c in completions),
                       sum(c.usage.completion_tokens for c in completions))
        return GenerateResponse(completions=completions, usage=total)

    async def _stream_generate(self, prepared: list[Prepared], tickets: list[Ticket]) -> AsyncIterator[bytes]:
        async for i, e in self._run(tickets):
            p = prepared[i]
            yield _sse({"index": i, "taskname": p.task.taskname, "version": p.task.version, "text": e.text,
                        "finish_reason": e.finish_reason, "truncated": p.truncated})
        yield b"data: [DONE]\n\n"

    @api.post("/v1/completions")
    async def completions(self, req: CompletionRequest, _=Depends(ApiKeys.check)):
        try:
            task = await asyncio.to_thread(self._ready().prompts.resolve, req.model)
        except UnknownTaskError as e:
            e.param = "model"
            raise
        names = ["prompt"] if not isinstance(req.prompt, list) else [f"prompt.{i}" for i in range(len(req.prompt))]
        items = [(req.model, _prompt_fields(input_fields(task), p, n), None) for p, n in zip(req.prompts(), names)]
        where = [(n, isinstance(p, dict)) for p, n in zip(req.prompts(), names)]
        prepared = await self._prepare(items, req, where)
        cid = f"cmpl-{uuid.uuid4().hex}"
        if req.stream:
            return StreamingResponse(self._stream_completion(cid, req.model, prepared, self._submit(prepared),
                                                             req.echo), media_type="text/event-stream")
        done = await self._collect(prepared, echo=req.echo)
        usage = _usage(sum(c.usage.prompt_tokens for c in done), sum(c.usage.completion_tokens for c in done))
        return {"id": cid, "object": "text_completion", "model": req.model, "system_fingerprint": task.version,
                "choices": [{"index": c.index, "text": c.text, "finish_reason": c.finish_reason,
                             "logprobs": c.logprobs.model_dump() if c.logprobs else None,
                             "truncated": c.truncated} for c in done], "usage": usage.model_dump()}

    async def _stream_completion(self, cid: str, model: str, prepared: list[Prepared], tickets: list[Ticket],
                                 echo: bool = False) -> AsyncIterator[bytes]:
        for i, p in enumerate(prepared if echo else []):  # the prompt first, as one chunk per input
            yield _sse({"id": cid, "object": "text_completion", "model": model,
                        "choices": [{"index": i, "text": self.engine.prompt_text(p), "finish_reason": None}]})
        async for i, e in self._run(tickets):
            yield _sse({"id": cid, "object": "text_completion", "model": model,
                        "choices": [{"index": i, "text": e.text, "finish_reason": e.finish_reason,
                                     "truncated": prepared[i].truncated}]})
        yield b"data: [DONE]\n\n"

    @api.get("/v1/tasks", response_model=list[TaskInfo])
    async def tasks(self, refresh: bool = False, _=Depends(ApiKeys.check)):
        """Every task with its current version; `refresh=true` re-reads the table's manifest now."""
        engine = self._ready()
        if refresh:
            await asyncio.to_thread(engine.prompts.refresh)
        return await asyncio.to_thread(engine.tasks)

    @api.get("/v1/models")
    async def models(self, _=Depends(ApiKeys.check)):
        """OpenAI's model list: every task this server can serve (`created`: when its version was published)."""
        return {"object": "list", "data": await asyncio.to_thread(self._ready().model_cards)}

    @api.get("/v1/models/{model_id}")
    async def model(self, model_id: str, _=Depends(ApiKeys.check)):
        return await asyncio.to_thread(self._ready().model_card, model_id)

    @api.get("/healthz")
    async def healthz(self):
        """200 with the replica's state, or 503 with why it cannot serve. `unservable_tasks`: current task
        versions found trained on another base model (left out of /v1/tasks and /v1/models, which check every
        task; requests for them get a 409). `scheduler`: the numbers of /metrics (serve/metrics.py), with
        `batches` (decoding steps: one forward pass each), their rows, the most rows and steps mixing tasks."""
        engine = self._ready()
        unservable = await asyncio.to_thread(engine.unservable)
        scheduler = self.metrics.summary()
        return {"status": "ok", "model": engine.model_name, "precision": engine.model.precision,
                "device": str(engine.model.device), "prefix_cache": engine.prefixes.enabled,
                "loaded_tasks": engine.prompts.loaded, "unservable_tasks": unservable,
                "batching": self.settings.batching, "batches": scheduler["batches"], "scheduler": scheduler,
                "torch_threads": torch.get_num_threads()}

    @api.get("/metrics")
    async def metrics_text(self):
        """Prometheus text exposition of this replica's scheduler (serve/metrics.py); no API key needed."""
        self._ready()
        return Response(self.metrics.render(), media_type=METRICS_CONTENT_TYPE)


def deployment_options(settings: ServerSettings, num_replicas: int | str = 1,
                       ray_actor_options: Optional[dict] = None, autoscaling_config: Optional[dict] = None) -> dict:
    """Ray Serve options matched to the scheduler's capacity: `max_ongoing_requests` = running rows + waiting
    queue + one more batch (so a request beyond the queue reaches the replica and gets its 503 with
    Retry-After, instead of waiting unboundedly in Serve's own queue); autoscaling (when given) on queue
    length with `target_ongoing_requests` = max_batch_size unless set (one full running batch per replica,
    more means requests are waiting); `ray_actor_options` default: `num_cpus` = settings.threads (1 if None)."""
    capacity = settings.max_batch_size + settings.max_queue
    options: dict = {"max_ongoing_requests": capacity + settings.max_batch_size}
    if autoscaling_config:
        options["autoscaling_config"] = {"target_ongoing_requests": settings.max_batch_size, **autoscaling_config}
    else:
        options["num_replicas"] = num_replicas
    options["ray_actor_options"] = ray_actor_options if ray_actor_options is not None else \
        {"num_cpus": settings.threads or 1}
    return options


def build_app(settings: ServerSettings, num_replicas: int | str = 1, ray_actor_options: Optional[dict] = None,
              autoscaling_config: Optional[dict] = None):
    """The Serve application for `serve.run`: the PromptServer deployment with `deployment_options` (fixed
    `num_replicas`, or `autoscaling_config` such as {"min_replicas": 1, "max_replicas": 4})."""
    options = deployment_options(settings, num_replicas, ray_actor_options, autoscaling_config)
    return PromptServer.options(**options).bind(settings.model_dump())


def app_builder(args: dict):
    """`serve run promptray.serve.app:app_builder table=... model=...` / the `import_path` of serve/config.yaml."""
    return build_app(ServerSettings.model_validate(args))

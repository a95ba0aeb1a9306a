"""`promptray infer` settings, named as in NeMo's `megatron_gpt_prompt_learning_eval.py`.

    virtual_prompt_model_file=TABLE   (or prompt_table=TABLE)      the prompt table (a path or file:// URI)
    gpt_model_file=MODEL              (or language_model_path=...)  default: the model the prompts were trained on
    data_paths=[a.jsonl,b.jsonl]      records of any tasks in the table, mixed
    inference.greedy / tokens_to_generate / temperature / top_k / top_p / repetition_penalty / add_BOS / seed
    batch_size=8  precision=bf16|fp32  accelerator=auto|cpu|gpu  output_file=predictions.jsonl
Distributed-launch keys of the NeMo command (trainer.devices, tensor_model_parallel_size, ...) are accepted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from promptray.platform.config import normalize_precision
from promptray.platform.devices import accelerator_problem, resolve_device
from promptray.platform.errors import ConfigError
from promptray.platform.generation import GenerationParams

NEMO_LAUNCH_KEYS = {"trainer", "tensor_model_parallel_size", "pipeline_model_parallel_size"}


class InferenceParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    greedy: bool = True
    tokens_to_generate: int = Field(30, ge=1)
    temperature: float = Field(1.0, ge=0)
    top_k: int = Field(0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0)
    add_BOS: bool = False
    seed: Optional[int] = None
    all_probs: bool = False  # NeMo key; accepted, unused
    compute_logprob: bool = False  # NeMo key; accepted, unused
    min_tokens_to_generate: int = 0  # NeMo key; accepted, unused


class InferConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    virtual_prompt_model_file: Optional[str] = None
    prompt_table: Optional[str] = None
    gpt_model_file: Optional[str] = None
    language_model_path: Optional[str] = None
    data_paths: list[str] = Field(default_factory=list)
    tasks: Optional[list[str]] = None
    inference: InferenceParams = Field(default_factory=InferenceParams)
    batch_size: int = Field(8, ge=1)
    precision: Union[int, str] = "bf16"
    accelerator: str = "auto"  # also read from NeMo's trainer.accelerator (platform/devices.py)
    output_file: str = "predictions.jsonl"
    s3_endpoint_url: Optional[str] = None  # S3-compatible server for s3:// tables and data (default: AWS chain)

    @property
    def table(self) -> Optional[str]:
        return self.prompt_table or self.virtual_prompt_model_file

    @property
    def base_model(self) -> Optional[str]:
        return self.language_model_path or self.gpt_model_file

    def generation(self) -> GenerationParams:
        i = self.inference
        return GenerationParams(tokens_to_generate=i.tokens_to_generate, greedy=i.greedy,
                                temperature=i.temperature, top_k=i.top_k, top_p=i.top_p,
                                repetition_penalty=i.repetition_penalty, seed=i.seed)


def load_infer_config(path: Optional[str], overrides: list[str]) -> InferConfig:
    try:
        base = OmegaConf.load(path) if path else OmegaConf.create({})
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError([f"argument {o!r} is not KEY=VALUE" for o in bad])
        raw: Any = OmegaConf.to_container(OmegaConf.merge(base, OmegaConf.from_dotlist(overrides)), resolve=True)
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot read inference settings: {str(e).splitlines()[0]}") from None
    trainer = raw.get("trainer") if isinstance(raw.get("trainer"), dict) else {}
    for k in NEMO_LAUNCH_KEYS:
        raw.pop(k, None)
    raw.setdefault("accelerator", trainer.get("accelerator", "auto"))
    try:
        cfg = InferConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError([f"{'.'.join(map(str, err['loc']))}: {err['msg']} (got {err.get('input')!r})"
                           for err in e.errors()]) from None
    problems = []
    if not cfg.table:
        problems.append("virtual_prompt_model_file: not set; name the prompt table (a path or file:// URI)")
    if not cfg.data_paths:
        problems.append("data_paths: empty; list .json/.jsonl files, e.g. data_paths=[a.jsonl,b.jsonl]")
    try:
        normalize_precision(cfg.precision)
    except ValueError:
        problems.append(f"precision: got {cfg.precision!r}; use bf16 or fp32")
    problems += [p for p in [accelerator_problem(cfg.accelerator, "accelerator (or trainer.accelerator)")] if p]
    if problems:
        raise ConfigError(problems)
    return cfg


def run_inference(cfg: InferConfig, progress: bool = True) -> dict:
    """Predict every record of `data_paths` and write them to `output_file`; returns a summary."""
    from promptray.platform.inference import load_inference_engine, predict, prepare, write_predictions
    from promptray.platform.s3_store import set_default_endpoint

    if cfg.s3_endpoint_url:
        set_default_endpoint(cfg.s3_endpoint_url)

    engine = load_inference_engine(cfg.table, cfg.base_model, cfg.tasks, normalize_precision(cfg.precision),
                                   resolve_device(cfg.accelerator))
    params = cfg.generation()
    examples = prepare(engine, cfg.data_paths, params.tokens_to_generate, add_bos=cfg.inference.add_BOS)
    predictions = predict(engine, examples, params, cfg.batch_size, progress=progress)
    scores = write_predictions(Path(cfg.output_file), examples, predictions, engine.versions)
    return {"output_file": cfg.output_file, "records": len(examples), "versions": engine.versions,
            "accuracy": scores}

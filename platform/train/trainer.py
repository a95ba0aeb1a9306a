"""Training in one process: NeMo's batch semantics, AdamW + warmup/cosine, validation, best prompts, publishing.

global_batch_size = micro_batch_size x data-parallel size x accumulation steps. Each optimizer step
averages the token loss of each micro-batch over the accumulation steps (as NeMo does). Validation
runs every `val_check_interval`; the prompts with the lowest validation loss are the ones published.

The loop itself lives in loop.py (it also runs on each worker of a Ray Train job, see
promptray.jobs.train); its pieces in steps.py; publishing in publishing.py. Import them from there.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

from promptray.platform.config.schema import PromptLearningConfig
from promptray.platform.data.data_files import remote_data_problems
from promptray.platform.errors import ConfigError
from promptray.platform.model.devices import resolve_device
from promptray.platform.train.distributed import Dist, broadcast_parameters, shard_frozen_model
from promptray.platform.train.engine import Engine, build_engine
from promptray.platform.train.loop import TrainLoop, TrainResult

log = logging.getLogger(__name__)


def prepare_engine(cfg: PromptLearningConfig, engine: Optional[Engine] = None) -> Engine:
    """Checks (s3:// data files exist at `storage.endpoint_url`), the seed, then the engine (built from the config
    unless given)."""
    _check_finetune(cfg)
    missing = remote_data_problems(cfg.model_dump(mode="json"), cfg.storage.endpoint_url)
    if missing:  # s3:// data, before the base model loads (local files: load_config(check_files=True))
        raise ConfigError(missing)
    torch.manual_seed(cfg.model.seed)
    return engine or build_engine(cfg)


def train(cfg: PromptLearningConfig, engine: Optional[Engine] = None, progress: bool = True,
          publish: bool = True) -> TrainResult:
    """Run prompt learning for `cfg.model.new_tasks` and publish the best prompts to the table, on the device
    `trainer.accelerator` names (platform/model/devices.py)."""
    if cfg.model.sharding != "none":
        log.info("model.sharding: %s applies to Ray Train jobs only; one process keeps the whole model",
                 cfg.model.sharding)
    loop = build_loop(cfg, device=resolve_device(cfg.trainer.accelerator), progress=progress, engine=engine)
    loop.run()
    return loop.finish(publish)


def build_loop(cfg: PromptLearningConfig, group: Dist = Dist(), device: Optional[torch.device] = None,
               progress: bool = False, engine: Optional[Engine] = None) -> TrainLoop:
    """One worker's loop (or the one process's): its engine (built from the config unless given) on
    `device`, the frozen model sharded when model.sharding is fsdp, and the trainable parameters made equal
    to rank 0's."""
    engine = prepare_engine(cfg, engine)
    if device is not None:
        engine.model.to(device)
    if group.active and cfg.model.sharding == "fsdp":
        shard_frozen_model(engine.model, group, device.type if device is not None else "cpu")
    broadcast_parameters(engine.model.trainable_parameters(), group)
    return TrainLoop(cfg, engine, group, device, progress)


def _check_finetune(cfg: PromptLearningConfig) -> None:
    if cfg.model.lm_finetune and cfg.model.existing_tasks:
        raise ConfigError("model.lm_finetune: true together with existing_tasks; fine-tuning changes the base "
                          "model, so the existing tasks' prompts would no longer fit it. Tune all tasks in one "
                          "run, or turn lm_finetune off")

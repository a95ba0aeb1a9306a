"""Where one process computes: NeMo's (PyTorch Lightning's) `trainer.accelerator` mapped to a torch device.

    auto      a CUDA GPU when there is one, else the CPU (Lightning's default)
    gpu/cuda  a CUDA GPU; without one, the CPU with a warning, so NeMo configs (which say `gpu`) run
              as written on a CPU-only machine
    cpu       the CPU

The engine runs on the device its model is on: training batches, generation and scoring move their
tensors there. Ray Train jobs choose per worker (`ray.use_gpu`), not with this setting.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # torch is imported where a device is chosen: config checks (and the SDK) stay light
    import torch

log = logging.getLogger(__name__)

def resolve_device(accelerator: str = "auto") -> Optional[torch.device]:
    """The CUDA device to compute on, or None for the CPU (the engine's default: tensors stay where made)."""
    import torch

    name = accelerator.lower()
    if name == "cpu":
        return None
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if name in ("gpu", "cuda"):
        log.warning("trainer.accelerator: %s, but no CUDA GPU is visible to this process; running on the CPU "
                    "(set trainer.accelerator=cpu to silence this)", accelerator)
    return None


def model_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (CPU for a module without parameters)."""
    import torch

    first = next(module.parameters(), None)
    return first.device if first is not None else torch.device("cpu")

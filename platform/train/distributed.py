"""torch.distributed helpers for data-parallel prompt learning (torch only; no Ray here).

Only the trainable parameters (prompt-tuning matrices, the p-tuning encoder) are replicated and
synchronised: their gradients are averaged with one all-reduce per optimizer step. The frozen base
model is either replicated untouched or, with `model.sharding: fsdp`, sharded across the workers with
FSDP2's `fully_shard` (its parameters are all-gathered per layer in forward and backward, never updated).
Every helper is a no-op in a single process, so the same training loop runs with or without a group.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn as nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dist:
    """This process's place in the data-parallel group (rank 0 of 1 without a process group)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the worker that writes metrics, publishes and reports the result."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Whether there are several workers (collectives run only then)."""
        return self.world_size > 1


def current() -> Dist:
    """Rank and world size of the default process group, or a single process when there is none."""
    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size())
    return Dist()


def average_gradients(params: Sequence[nn.Parameter], group: Dist) -> None:
    """Replace each parameter's gradient by its mean over the workers (one flat all-reduce).

    A parameter without a gradient on this worker (its task was not in any of its micro-batches) takes
    part with zeros; one without a gradient on every worker keeps none (as in a single process, where
    the optimizer then leaves it alone), so every worker ends with the same gradients."""
    if not group.active or not params:
        return
    grads = [p.grad.detach() if p.grad is not None else torch.zeros_like(p) for p in params]
    has = torch.tensor([p.grad is not None for p in params], dtype=grads[0].dtype)  # (P,)
    flat = torch.cat([g.reshape(-1) for g in grads] + [has])  # (sum of numels + P,)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= group.world_size
    offset, seen = 0, flat[-len(params):]  # (P,) > 0 where some worker had a gradient
    for i, p in enumerate(params):
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone() if seen[i] > 0 else None
        offset += n


def all_reduce_sums(values: Sequence[float], group: Dist) -> list[float]:
    """Element-wise sums of `values` over the workers (float64, so token counts stay exact)."""
    if not group.active:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64)  # (K,)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


@torch.no_grad()
def broadcast_parameters(params: Iterable[torch.Tensor], group: Dist, src: int = 0) -> None:
    """Make every worker start from rank `src`'s values (replicas built with one seed already agree;
    this guards against any nondeterminism in how they were built)."""
    if not group.active:
        return
    for p in params:
        dist.broadcast(p.data, src=src)


def barrier(group: Dist) -> None:
    """Wait for every worker of `group` (torch.distributed.barrier); nothing with one worker."""
    if group.active:
        dist.barrier()


# ----------------------------------------------------------------------------- FSDP2 on the frozen model

def _largest_module_list(lm: nn.Module) -> Optional[nn.ModuleList]:
    """The transformer's list of blocks (`transformer.h`, `model.layers`, ...): the ModuleList holding the
    most parameters."""
    lists = [m for m in lm.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    return max(lists, key=lambda m: sum(p.numel() for p in m.parameters()), default=None)


def _tied(a: Optional[nn.Module], b: Optional[nn.Module]) -> bool:
    wa, wb = getattr(a, "weight", None), getattr(b, "weight", None)
    return wa is not None and wa is wb


def shard_frozen_model(model: nn.Module, group: Dist, device_type: str = "cpu") -> int:
    """Shard the frozen base model of a `PromptLearningModel` across the workers with FSDP2 `fully_shard`.

    Each transformer block is one FSDP unit, and so are the input and output embeddings when they are
    separate matrices; the prompt model itself is the root (its prompt parameters ignored: they stay
    replicated and are averaged by `average_gradients`), so a step calls `model(batch)` and every unit is
    gathered just before it runs and freed after it (again in backward). A worker thus holds its shard plus
    about one unit at a time. Every worker must run the same passes: sharded runs use the plain batch
    layout (no shared-prefix split, whose pass count depends on the batch). Returns the number of units."""
    if not group.active:
        return 0
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    lm = model.lm
    mesh = init_device_mesh(device_type, (group.world_size,))
    blocks = _largest_module_list(lm)
    units = list(blocks) if blocks is not None else []
    emb_in, emb_out = lm.get_input_embeddings(), lm.get_output_embeddings()
    if not _tied(emb_in, emb_out):
        units += [m for m in (emb_in, emb_out) if m is not None]
    for unit in units:
        fully_shard(unit, mesh=mesh, reshard_after_forward=True)
    model.share_prefix = False
    fully_shard(model, mesh=mesh, reshard_after_forward=True, ignored_params=set(model.bank.parameters()))
    log.info("FSDP2: sharded %d units of the frozen base model across %d workers", len(units), group.world_size)
    return len(units)

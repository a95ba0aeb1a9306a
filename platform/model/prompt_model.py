"""The frozen causal LM with virtual embeddings substituted into its input embeddings.

Works with any Hugging Face causal LM (GPT-2, Llama, ...): virtual positions are filled from the
`PromptBank`, real positions from the LM's own embedding table. The frozen LM may run in bf16 while
prompt parameters stay float32; logits are computed only at positions that carry loss.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
from typing import Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers.cache_utils import DynamicLayer

from promptray.platform.data.batching import Batch, to_device
from promptray.platform.model.attention import DECODE_ATTENTION, register_decode_attention
from promptray.platform.model.devices import model_device
from promptray.platform.model.limits import max_positions_of
from promptray.platform.model.prefix import GroupBy, PackedBatch, PrefixSplit, pack_batch, split_shared_prefix
from promptray.platform.model.prompt_encoder import PromptBank

log = logging.getLogger(__name__)
Precision = Literal["fp32", "bf16"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


TRAIN_ATTENTION = ("eager", "math", "sdpa")


class _Targets:
    """The loss terms of one forward pass: `logits` (N, V) float and `labels` (N,) of its N targets, `rows`
    (N,) the layout row of each target and `row_tasks` (R,) each layout row's task (a packed layout: one
    "row" per token; the plain and split layouts keep the batch's rows)."""

    def __init__(self, logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor, row_tasks: list[str]):
        """`targets` (R, L) bool marks the targets row by row, in `labels`' order."""
        self.logits, self.labels, self.row_tasks = logits, labels, row_tasks
        self.rows = targets.nonzero(as_tuple=True)[0]  # (N,)

    def total(self) -> tuple[torch.Tensor, int]:
        return F.cross_entropy(self.logits, self.labels, reduction="sum"), int(self.labels.numel())

    def by_task(self) -> dict[str, tuple[torch.Tensor, int]]:
        tasks = list(dict.fromkeys(self.row_tasks))
        index = torch.tensor([tasks.index(t) for t in self.row_tasks], device=self.rows.device)  # (R,)
        owner = index[self.rows]  # (N,)
        each = F.cross_entropy(self.logits, self.labels, reduction="none")  # (N,)
        sums = torch.zeros(len(tasks), dtype=each.dtype, device=each.device).index_add(0, owner, each)
        counts = torch.bincount(owner, minlength=len(tasks)).tolist()  # (K,)
        return {t: (sums[i], counts[i]) for i, t in enumerate(tasks)}

    def row_logprobs(self) -> torch.Tensor:
        """(R,) per layout row: the sum of its targets' log-probabilities."""
        logp = self.logits.log_softmax(-1).gather(-1, self.labels[:, None]).squeeze(-1)  # (N,)
        return torch.zeros(len(self.row_tasks), dtype=logp.dtype, device=logp.device).index_add(0, self.rows, logp)


class PromptLearningModel(nn.Module):
    """A Hugging Face causal LM (`lm`) with the soft prompts of a `PromptBank` (`bank`) at its virtual positions.

    Holds: `lm`, frozen unless `lm_finetune` (then its weights stay float32 and `autocast()` runs bf16); a
    frozen `lm` is cast to `precision` ("fp32" or "bf16") while the bank's prompts stay float32 and are cast to
    the LM's dtype where they are placed. `lm` stays in eval mode (no dropout) unless fine-tuned; the
    p-tuning encoder follows `train()`/`eval()`. Moving the model (`.to(device)`) moves the bank with it.

    Inputs are `Batch`es (data/batching.py): `input_ids`, `virtual_ids` (the row of the task's prompt, -1 for
    real tokens and padding), `loss_mask`, `attention_mask`, `position_ids`, all (B, T), and `tasknames` (B).
    - `model(batch)` / `loss(batch)`: (sum of the token cross-entropies, a 0-dim float32 tensor; number of
      target tokens); token t predicts token t+1, logits only at positions that predict a target. The
      shared-prefix layouts of prefix.py (`pack_batch`, `split_shared_prefix`) are used when they save work,
      each checked once against the plain forward and switched off with a warning if the model disagrees.
      `share_prefix` (True) turns them on; `prefix_group_by` ("prompt", the default, or "task") is how rows
      are grouped (prefix.py `shared_prefixes`): "prompt" also gives rows identical up to their first target
      (one record's label-ranking rows) their whole prompt once, those prompts sharing their task's start in
      turn (prefix.py `PrefixSplit.outer`); "task" shares only each task's start.
    - `embed(input_ids, virtual_ids, tasknames)`: (B, T, H) input embeddings in the LM's dtype.
    - `step(emb, attention_mask, position_ids, past)`: one decoding pass over `emb` (B, t, H): float32 logits
      of the last position (B, V) and the KV cache (the decode core's and the prefix cache's building block).

    Errors: `set_train_attention` raises ValueError for an unknown kind; `embed` (and so `loss`) raises
    KeyError, from the bank, for a row of a task the bank does not hold when the batch has virtual positions.
    """

    def __init__(self, lm: nn.Module, bank: PromptBank, precision: Precision = "fp32", lm_finetune: bool = False):
        super().__init__()
        self.lm = lm
        self.bank = bank
        self.precision = precision
        self.lm_finetune = lm_finetune
        for p in lm.parameters():
            p.requires_grad_(lm_finetune)
        # A frozen LM runs in the compute dtype itself; a fine-tuned one keeps fp32 weights under autocast.
        # (training attention, inference attention) when they differ: eager trains faster on the CPU in bf16
        self._attention = _attention_per_mode(lm, precision) if not lm_finetune else None
        self._math_sdpa = False  # bf16 training on the CPU through SDPA's math backend (set_train_attention)
        if not lm_finetune:
            lm.to(DTYPES[precision])
        lm.eval()
        backbone = getattr(lm, "base_model", lm)
        # heads that do more than lm_head(hidden): soft-capping (Gemma 2), scaling (Cohere, Granite, Falcon-H1)
        scaled = any(getattr(lm.config, k, None) for k in ("final_logit_softcapping", "logit_scale",
                                                           "logits_scaling", "lm_head_multiplier"))
        self._backbone = None if backbone is lm or scaled else backbone  # None: use full forward
        self._cache_kw: Optional[str] = None
        self.share_prefix = True  # compute each group's constant prompt start once per batch (prefix.py)
        self.prefix_group_by: GroupBy = "prompt"  # rows that share a prefix: same prompt, else same task
        self.fast_paths = ["split"] if _sliding(lm.config) else ["packed", "split"]  # tried in this order
        self._verified: set[str] = set()  # the layouts checked against the plain forward (`_verify`)

    def train(self, mode: bool = True) -> PromptLearningModel:
        """nn.Module.train, keeping a frozen LM in eval mode; on the CPU in bf16, switches the LM's attention
        kernel between the training and the inference choice (see `set_train_attention`)."""
        super().train(mode)
        if not self.lm_finetune:
            self.lm.eval()  # the frozen LM never uses dropout
        if self._attention is not None:  # the training choice applies on the CPU; a GPU uses SDPA throughout
            want = self._attention[0 if mode and self.device.type == "cpu" else 1]
            if self.lm.config._attn_implementation != want:
                self.lm.set_attn_implementation(want)
        return self

    def set_train_attention(self, kind: str) -> None:
        """How a bf16 frozen model attends while training on the CPU (inference uses SDPA, with decoding
        steps in platform/model/attention.py): "eager" (HF eager attention: bf16 scores), "math" (SDPA's math
        backend, which computes bf16 inputs in float32) or "sdpa" (SDPA as dispatched: the CPU flash kernel,
        float32 accumulators, slow backward). No effect on a GPU, in fp32, for a fine-tuned model or one
        without SDPA."""
        if kind not in TRAIN_ATTENTION:
            raise ValueError(f"train attention {kind!r}: use one of {TRAIN_ATTENTION}")
        if self._attention is None:
            return
        self._attention = ("eager" if kind == "eager" else "sdpa", DECODE_ATTENTION)
        self._math_sdpa = kind == "math"
        self.train(self.training)

    def _train_kernels(self):
        """The SDPA backend of this forward (the math one while training with set_train_attention("math"))."""
        if self._math_sdpa and self.training and self.device.type == "cpu":
            return sdpa_kernel(SDPBackend.MATH)
        return contextlib.nullcontext()

    def _dropout(self, on: bool) -> None:
        """Dropout (p-tuning encoder; the LM when fine-tuned) on or off, attention kernels untouched."""
        nn.Module.train(self, on)
        if not self.lm_finetune:
            self.lm.eval()

    @property
    def max_positions(self) -> int:
        """Longest sequence the base model takes (its position table); 2048 when the config does not say."""
        return max_positions_of(self.lm.config)

    @property
    def hidden_size(self) -> int:
        """H: the width of the LM's input embeddings (and of every prompt row)."""
        return self.lm.get_input_embeddings().weight.shape[1]

    def autocast(self):
        """bf16 autocast on the LM's device for a fine-tuned LM in bf16; a no-op context otherwise (a frozen LM
        already runs in its compute dtype)."""
        if self.lm_finetune and self.precision == "bf16":
            return torch.autocast(next(self.lm.parameters()).device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def embed(self, input_ids: torch.Tensor, virtual_ids: torch.Tensor, tasknames: list[str]) -> torch.Tensor:
        """(B, T, H) input embeddings with each task's virtual rows at its virtual positions."""
        if not bool((virtual_ids >= 0).any()):
            return self.lm.get_input_embeddings()(input_ids)  # (B, T, H)
        rows, offsets = self.bank.lookup(tasknames)  # (S, H), (B,)
        return self._place_virtual(input_ids, virtual_ids, rows, offsets[:, None])

    def _place_virtual(self, input_ids: torch.Tensor, virtual_ids: torch.Tensor, rows: torch.Tensor,
                       offsets: torch.Tensor) -> torch.Tensor:
        """(B, T, H) token embeddings with rows[offset + virtual id] at virtual positions (offsets (B|1, 1|T))."""
        emb = self.lm.get_input_embeddings()(input_ids)  # (B, T, H)
        is_virtual = virtual_ids >= 0  # (B, T)
        idx = (offsets.to(virtual_ids.device) + virtual_ids).clamp(min=0)  # (B, T)
        virt = rows[idx].to(emb.dtype)  # (B, T, H)
        return torch.where(is_virtual.unsqueeze(-1), virt, emb)

    def _hidden(self, emb: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                past=None, use_cache: bool = False):
        out = self._backbone(inputs_embeds=emb, attention_mask=attention_mask, position_ids=position_ids,
                             use_cache=use_cache, **self._cache_arg(past))
        return out[0], (_cache_of(out) if use_cache else None)  # (B, T, H)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm.get_output_embeddings()(hidden).float()  # (..., V)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, int]:
        """The loss (below); called as `model(batch)` so that an FSDP-sharded model runs its hooks."""
        return self.loss(batch)

    def loss(self, batch: Batch) -> tuple[torch.Tensor, int]:
        """(sum of token cross-entropies, number of target tokens). Token t predicts token t+1.

        Each task's shared prompt start is computed once per batch when that saves work (prefix.py): a
        packed single row, or prefixes then remainders. Each layout is checked once against the plain
        forward on its first batch and switched off, with a warning, if the model does not honour it."""
        return self._terms(batch).total()

    def task_losses(self, batch: Batch) -> dict[str, tuple[torch.Tensor, int]]:
        """Per task of a mixed batch: (sum of its rows' token cross-entropies, its number of target tokens),
        from one forward pass (the same layouts as `loss`). A task's sum depends only on its own rows, so
        its gradient reaches only its own prompt: several prompts can train on one forward, each normalised
        by its own token count (platform/train/pack.py)."""
        return self._terms(batch).by_task()

    @torch.no_grad()
    def target_logprobs(self, batch: Batch, *, reuse: Optional[dict] = None) -> torch.Tensor:
        """(B,) float32: per row, the sum of the log-probabilities of its target tokens (loss_mask) given what
        precedes them. One forward; the output layer runs only at the positions that predict a target, and
        rows that share a prompt run it once (the split layout of prefix.py, checked once against the plain
        forward as in `loss`): rows identical up to their answer (one record with each candidate label, kept
        in one batch) share their whole prompt, so scoring L answers after a prompt costs one prompt and L
        short answers; other rows of a task share its prompt start.

        `reuse`: a dict the caller keeps over the batches of one scoring pass (the prompts unchanged): the KV
        cache of a shared start seen in an earlier batch (a task's start, the same in every batch) is taken
        from it, not run again. Same values; the check against the plain forward runs without it."""
        terms = None
        if self.share_prefix and "split" in self.fast_paths:
            layout = split_shared_prefix(to_device(batch, torch.device("cpu")), group_by=self.prefix_group_by)
            layout = to_device(layout, batch.input_ids.device)
            terms = self._terms_layout("split", layout, reuse) if layout is not None else None
            if terms is not None and _checked_as("split", layout) not in self._verified:
                self._verify("split", layout, terms, batch)
                terms = terms if _checked_as("split", layout) in self._verified else None  # off: plain forward
        return (terms or self._terms_plain(batch)).row_logprobs()

    def _terms(self, batch: Batch) -> _Targets:
        with self._train_kernels():
            for kind in self.fast_paths if self.share_prefix else ():
                host = to_device(batch, torch.device("cpu"))  # layouts are planned on the CPU, then moved
                plan = pack_batch if kind == "packed" else split_shared_prefix
                layout = to_device(plan(host, group_by=self.prefix_group_by), batch.input_ids.device)
                out = self._terms_layout(kind, layout) if layout is not None else None
                if out is not None:
                    verified = _checked_as(kind, layout) in self._verified
                    return out if verified else self._verify(kind, layout, out, batch)
            return self._terms_plain(batch)

    def _terms_layout(self, kind: str, layout, reuse: Optional[dict] = None) -> Optional[_Targets]:
        try:
            return self._terms_packed(layout) if kind == "packed" else self._terms_shared(layout, reuse)
        except (TypeError, ValueError, RuntimeError, IndexError) as exc:  # a model that cannot take the layout
            log.warning("shared-prefix %s batches switched off for this model: %s", kind, exc)
            self.fast_paths = [k for k in self.fast_paths if k != kind]
            return None

    def _verify(self, kind: str, layout, out: _Targets, batch: Batch) -> _Targets:
        """Compare a layout's loss with the plain forward's on this batch; keep the layout only if they agree.
        Both run again without dropout and without touching the RNG, so the check neither fails because of
        p-tuning dropout nor shifts the random stream (a resumed run stays equal to an uninterrupted one)."""
        was_training = self.training
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                self._dropout(False)
                again = self._terms_layout(kind, layout)
                fast, ref = (again.total() if again is not None else None), self._terms_plain(batch).total()
        finally:
            self._dropout(was_training)
        tol = 2e-2 if self.precision == "bf16" else 1e-4
        agree = fast is not None and fast[1] == ref[1] and \
            abs(float(fast[0]) - float(ref[0])) <= tol * max(1.0, abs(float(ref[0])))
        if agree:
            self._verified.add(_checked_as(kind, layout))
            return out
        log.warning("shared-prefix %s batches switched off: loss %s differs from the plain forward's %.6g",
                    kind, "n/a" if fast is None else f"{float(fast[0]):.6g}", float(ref[0]))
        self.fast_paths = [k for k in self.fast_paths if k != kind]
        return self._terms(batch)

    def _terms_plain(self, batch: Batch) -> _Targets:
        L = _columns_needed(batch.loss_mask)
        targets = batch.loss_mask[:, 1:L + 1]  # (B, L): column c of the inputs predicts token c + 1
        labels = batch.input_ids[:, 1:L + 1][targets]  # (N,)
        with self.autocast():
            emb = self.embed(batch.input_ids[:, :L], batch.virtual_ids[:, :L], batch.tasknames)  # (B, L, H)
            logits = self._target_logits(emb, batch.attention_mask[:, :L], batch.position_ids[:, :L], targets)
        return _Targets(logits, labels, targets, batch.tasknames)

    def _terms_packed(self, p: PackedBatch) -> _Targets:
        """The targets of one packed row: a block mask keeps each row to its task's prefix and itself."""
        with self.autocast():
            rows, offsets = self.bank.lookup(p.tasknames)  # (S, H), (M,)
            emb = self._place_virtual(p.input_ids, p.virtual_ids, rows, offsets[None, :])  # (1, M, H)
            bias = torch.zeros(p.allowed.shape, dtype=emb.dtype, device=emb.device)
            bias = bias.masked_fill(~p.allowed, torch.finfo(emb.dtype).min)
            logits = self._target_logits(emb, bias[None, None], p.position_ids, p.targets)  # (N, V)
        return _Targets(logits, p.labels, p.targets[0][:, None], p.tasknames)

    def _target_logits(self, emb: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                       targets: torch.Tensor, past=None) -> torch.Tensor:
        """(N, V) logits at the input positions that predict a target (targets: (B, L) bool, like emb)."""
        if self._backbone is not None:
            hidden, _ = self._hidden(emb, attention_mask, position_ids, past)  # (B, L, H)
            return self._logits(hidden[targets])  # (N, V): only where loss is taken
        out = self.lm(inputs_embeds=emb, attention_mask=attention_mask, position_ids=position_ids,
                      use_cache=past is not None, **self._cache_arg(past))
        return out.logits[targets].float()  # (N, V)

    def _terms_shared(self, s: PrefixSplit, reuse: Optional[dict] = None) -> Optional[_Targets]:
        """The loss with each group's prefix run once (K rows) and its KV cache gathered to the B rows;
        None (and sharing switched off) for models whose cache is not a plain growing KV cache."""
        L, P = _columns_needed(s.loss_mask), s.cache_mask.shape[1]
        targets = s.loss_mask[:, 1:L + 1]  # (B, L)
        labels = s.input_ids[:, 1:L + 1][targets]  # (N,)
        with self.autocast():
            past = self._prefix_cache(s, reuse)  # (K, heads, P, d) per layer
            if past is None:
                self.fast_paths = [k for k in self.fast_paths if k != "split"]  # sliding, linear, quantized
                return None
            past.reorder_cache(s.row_group)  # (B, heads, P, d): a gather, so gradients sum back per group
            emb = self.embed(s.input_ids[:, :L], s.virtual_ids[:, :L], s.tasknames)  # (B, L, H)
            logits = self._target_logits(emb, s.attention_mask[:, :P + L], s.position_ids[:, :L], targets, past)
        return _Targets(logits, labels, targets, s.tasknames)

    def _prefix_cache(self, s: PrefixSplit, reuse: Optional[dict] = None):
        """The KV cache of the K prefix rows of `s` (K, heads, P, d) per layer, P = s.cache_mask's width: the
        prefixes run whole (or come from `reuse`, see `target_logprobs`), or (`s.outer`) their shared starts
        once and then their rests against them. None when the model's cache is not a plain growing KV cache
        (sliding, linear, quantized)."""
        o = s.outer
        if o is None:
            key = _prefix_key(s) if reuse is not None else None
            if key is not None and key in reuse:
                return copy.deepcopy(reuse[key])  # a copy: the caller gathers and extends it
            emb = self.embed(s.prefix_ids, s.prefix_virtual, s.prefix_tasks)  # (K, P, H)
            past = self._cache_of_run(emb, s.prefix_mask, (s.prefix_mask.cumsum(-1) - 1).clamp(min=0))
            if key is not None and _plain(past):
                reuse[key] = copy.deepcopy(past)
        else:
            past = self._prefix_cache(o, reuse)  # (K_o, heads, P_o, d)
            if past is None:
                return None
            past.reorder_cache(o.row_group)  # (K, heads, P_o, d)
            emb = self.embed(o.input_ids, o.virtual_ids, o.tasknames)  # (K, S_o, H)
            past = self._cache_of_run(emb, o.attention_mask, o.position_ids, past)  # (K, heads, P_o + S_o, d)
        return past if _plain(past) else None

    def _cache_of_run(self, emb: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                      past=None):
        """The KV cache after running `emb` (B, t, H) on `past`; no logits (a prefix predicts no target)."""
        if self._backbone is None:
            return self.step(emb, attention_mask, position_ids, past)[1]
        with self.autocast():
            return self._hidden(emb, attention_mask, position_ids, past, use_cache=True)[1]

    def step(self, emb: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
             past=None) -> tuple[torch.Tensor, object]:
        """One decoding step over `emb` (B, t, H): (logits of the last position (B, V), KV cache)."""
        with self.autocast():
            if self._backbone is not None:
                hidden, past = self._hidden(emb, attention_mask, position_ids, past, use_cache=True)
                return self._logits(hidden[:, -1]), past
            out = self.lm(inputs_embeds=emb, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=True, **self._cache_arg(past))
            return out.logits[:, -1].float(), _cache_of(out)

    def _cache_arg(self, past) -> dict:
        """The KV-cache keyword: `cache` (transformers >= 5.2x), `past_key_values` before."""
        if past is None:
            return {}
        if self._cache_kw is None:
            self._cache_kw = "cache" if "cache" in inspect.signature(self.lm.forward).parameters else "past_key_values"
        return {self._cache_kw: past}

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters that train: the new tasks' prompts or p-tuning encoder, and the LM when fine-tuned."""
        return [p for p in self.parameters() if p.requires_grad]

    def token_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, t, H) LM input embeddings of real token ids (no virtual rows), as each decoding step feeds them."""
        return self.lm.get_input_embeddings()(input_ids)  # (B, t, H)

    @property
    def device(self) -> torch.device:
        """Where the base model is; batches made on the CPU are moved here (generation, scoring)."""
        return model_device(self.lm)

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype of the LM's input embeddings: bfloat16 for a frozen LM in bf16, else float32."""
        return self.lm.get_input_embeddings().weight.dtype

    def num_parameters(self, trainable_only: bool = True) -> int:
        """Number of parameter elements: only the trainable ones by default, else all (LM and prompts)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def _cache_of(out):
    """The KV cache a forward returned (`cache` in newer transformers, `past_key_values` in older)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def _columns_needed(loss_mask: torch.Tensor) -> int:
    """How many leading input columns some target needs: through the one before the last target.
    (The last token of an answer-only row, its EOS, is a target but never an input.)"""
    cols = loss_mask[:, 1:].any(0).nonzero()  # (n, 1)
    return int(cols[-1]) + 1 if len(cols) else 1


def _attention_per_mode(lm: nn.Module, precision: Precision) -> Optional[tuple[str, str]]:
    """bf16 on the CPU: ("eager", DECODE_ATTENTION), eager attention for training and SDPA for inference, with
    single-token decoding steps in float32 matmuls (platform/model/attention.py: the CPU flash kernel is slow for
    one bf16 query). Eager trains faster (SDPA's CPU flash-attention backward took ~22% of a step,
    benchmarks/results/train_profile.json); both are equally close to fp32 (benchmarks/README.md). None
    elsewhere."""
    on_cpu = next(lm.parameters()).device.type == "cpu"
    current = getattr(lm.config, "_attn_implementation", None)
    if precision != "bf16" or not on_cpu or current not in ("sdpa", DECODE_ATTENTION):
        return None
    try:
        lm.set_attn_implementation("eager")
        lm.set_attn_implementation(register_decode_attention())
    except (AttributeError, ValueError):  # older transformers, or a model with no eager attention
        return None
    return ("eager", DECODE_ATTENTION)


def _plain(past) -> bool:
    """Whether a KV cache is a plain growing one (every layer a DynamicLayer), which prefix sharing gathers."""
    return all(type(layer) is DynamicLayer for layer in getattr(past, "layers", [None]))


def _prefix_key(s: PrefixSplit) -> tuple:
    """What a split's prefix rows are (tasks, tokens, virtual rows, mask): equal keys, equal KV caches while
    the prompts do not change."""
    return (tuple(s.prefix_tasks), *(tuple(map(tuple, t.tolist())) for t in (s.prefix_ids, s.prefix_virtual,
                                                                             s.prefix_mask)))


def _checked_as(kind: str, layout) -> str:
    """The name a layout is verified under: a split whose prefixes nest (prefix.py `PrefixSplit.outer`: record
    prompts on their task's start) is checked on its own, not covered by a plain split's check."""
    return f"{kind}+outer" if getattr(layout, "outer", None) is not None else kind


def _sliding(config) -> bool:
    """Whether some layer attends only to a window (a custom packed mask would override that window)."""
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        return "sliding_attention" in layer_types
    return bool(getattr(config, "sliding_window", None))

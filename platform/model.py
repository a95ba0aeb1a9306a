"""The frozen causal LM with virtual embeddings substituted into its input embeddings.

Works with any Hugging Face causal LM (GPT-2, Llama, ...): virtual positions are filled from the
`PromptBank`, real positions from the LM's own embedding table. The frozen LM may run in bf16 while
prompt parameters stay float32; logits are computed only at positions that carry loss.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from promptray.platform.batching import Batch
from promptray.platform.prompt_encoder import PromptBank

Precision = Literal["fp32", "bf16"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class PromptLearningModel(nn.Module):
    def __init__(self, lm: nn.Module, bank: PromptBank, precision: Precision = "fp32", lm_finetune: bool = False):
        super().__init__()
        self.lm = lm
        self.bank = bank
        self.precision = precision
        self.lm_finetune = lm_finetune
        for p in lm.parameters():
            p.requires_grad_(lm_finetune)
        # A frozen LM runs in the compute dtype itself; a fine-tuned one keeps fp32 weights under autocast.
        if not lm_finetune:
            lm.to(DTYPES[precision])
        lm.eval()
        backbone = getattr(lm, "base_model", lm)
        # heads that do more than lm_head(hidden): soft-capping (Gemma 2), scaling (Cohere, Granite, Falcon-H1)
        scaled = any(getattr(lm.config, k, None) for k in ("final_logit_softcapping", "logit_scale",
                                                           "logits_scaling", "lm_head_multiplier"))
        self._backbone = None if backbone is lm or scaled else backbone  # None: use full forward

    def train(self, mode: bool = True) -> "PromptLearningModel":
        super().train(mode)
        if not self.lm_finetune:
            self.lm.eval()  # the frozen LM never uses dropout
        return self

    @property
    def max_positions(self) -> int:
        """Longest sequence the base model takes (its position table); 2048 when the config does not say."""
        cfg = self.lm.config
        return int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 2048)

    @property
    def hidden_size(self) -> int:
        return self.lm.get_input_embeddings().weight.shape[1]

    def autocast(self):
        if self.lm_finetune and self.precision == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def embed(self, input_ids: torch.Tensor, virtual_ids: torch.Tensor, tasknames: list[str]) -> torch.Tensor:
        """(B, T, H) input embeddings with each task's virtual rows at its virtual positions."""
        emb = self.lm.get_input_embeddings()(input_ids)  # (B, T, H)
        is_virtual = virtual_ids >= 0  # (B, T)
        if not bool(is_virtual.any()):
            return emb
        rows, offsets = self.bank.lookup(tasknames)  # (S, H), (B,)
        idx = (offsets.to(virtual_ids.device)[:, None] + virtual_ids).clamp(min=0)  # (B, T)
        virt = rows[idx].to(emb.dtype)  # (B, T, H)
        return torch.where(is_virtual.unsqueeze(-1), virt, emb)

    def _hidden(self, emb: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                past=None, use_cache: bool = False):
        out = self._backbone(inputs_embeds=emb, attention_mask=attention_mask, position_ids=position_ids,
                             past_key_values=past, use_cache=use_cache)
        return out[0], (out.past_key_values if use_cache else None)  # (B, T, H)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm.get_output_embeddings()(hidden).float()  # (..., V)

    def loss(self, batch: Batch) -> tuple[torch.Tensor, int]:
        """(sum of token cross-entropies, number of target tokens). Token t predicts token t+1."""
        targets = batch.loss_mask[:, 1:]  # (B, T-1)
        labels = batch.input_ids[:, 1:][targets]  # (N,)
        with self.autocast():
            emb = self.embed(batch.input_ids, batch.virtual_ids, batch.tasknames)  # (B, T, H)
            if self._backbone is not None:
                hidden, _ = self._hidden(emb, batch.attention_mask, batch.position_ids)
                logits = self._logits(hidden[:, :-1][targets])  # (N, V): only where loss is taken
            else:
                out = self.lm(inputs_embeds=emb, attention_mask=batch.attention_mask,
                              position_ids=batch.position_ids, use_cache=False)
                logits = out.logits[:, :-1][targets].float()  # (N, V)
        return F.cross_entropy(logits, labels, reduction="sum"), int(labels.numel())

    def step(self, emb: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
             past=None) -> tuple[torch.Tensor, object]:
        """One decoding step over `emb` (B, t, H): (logits of the last position (B, V), KV cache)."""
        with self.autocast():
            if self._backbone is not None:
                hidden, past = self._hidden(emb, attention_mask, position_ids, past, use_cache=True)
                return self._logits(hidden[:, -1]), past
            out = self.lm(inputs_embeds=emb, attention_mask=attention_mask, position_ids=position_ids,
                          past_key_values=past, use_cache=True)
            return out.logits[:, -1].float(), out.past_key_values

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def token_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm.get_input_embeddings()(input_ids)  # (B, t, H)

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.lm.get_input_embeddings().weight.dtype

    def num_parameters(self, trainable_only: bool = True) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


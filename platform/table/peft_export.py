"""Hugging Face PEFT interop: export a table task as a PEFT prompt-tuning adapter, import one into a table.

A PEFT prompt-tuning adapter is a folder with `adapter_config.json` and `adapter_model.safetensors`, whose
one tensor `prompt_embeddings` (num_virtual_tokens, token_dim) PEFT prepends to the input embeddings of
every sequence. That is a promptray template with one `<|VIRTUAL_PROMPT_0|>` marker at its very start; a
template with several markers (or text before the marker) has no PEFT equivalent.

A task trained with `model.data.add_bos` has no PEFT equivalent either: its inputs start with BOS *before*
the virtual tokens, and PEFT has no setting for that (it prepends the virtual tokens to whatever ids the
caller's tokenizer gives). It is refused like a template with text before the marker (`force=True`
exports it with a warning).

Export writes, next to the two PEFT files, `promptray_task.json` with what PEFT has no place for (task
name, table version, template, encoding (add_bos, add_eos, tokenizer fingerprint), base-model
fingerprint, metrics, source), so an export imported back into a table loses nothing. PEFT ignores that
file; nothing promptray-specific goes into `adapter_config.json`, so `PeftModel.from_pretrained` loads the
folder without warnings. peft itself is never imported here.

Import (the other direction) is `peft_import.import_peft_adapter`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional, Union

import torch
from safetensors.torch import save_file

from promptray.platform.data.templates import TaskTemplate, Text, Virtual, parse_template
from promptray.platform.errors import ConfigError
from promptray.platform.model.fingerprint import embedding_sha256
from promptray.platform.table.table import PromptTable, TaskPrompt

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_WEIGHTS_PICKLE = "adapter_model.bin"
TASK_FILE = "promptray_task.json"
TASK_FILE_FORMAT = "promptray-peft-export/1"
WEIGHT_KEY = "prompt_embeddings"
IMPORTABLE_PEFT_TYPES = ("PROMPT_TUNING", "P_TUNING")
DEFAULT_TEMPLATE = "<|VIRTUAL_PROMPT_0|>{input}{output}"
DEFAULT_ANSWER_FIELD = "output"

TableLike = Union[str, os.PathLike, PromptTable]


def as_table(table_uri_or_table: TableLike) -> PromptTable:
    """The table itself, or the table at a URI."""
    return table_uri_or_table if isinstance(table_uri_or_table, PromptTable) else PromptTable(table_uri_or_table)


def peft_layout_problems(template: TaskTemplate) -> list[str]:
    """Why a template cannot be expressed as a PEFT prompt-tuning adapter (empty: it can)."""
    parts = parse_template(template.prompt_template)[0]
    markers = [p for p in parts if isinstance(p, Virtual)]
    problems = []
    if len(markers) != 1:
        problems.append(f"it has {len(markers)} virtual markers (splits {template.virtual_token_splits})")
    if not parts or not isinstance(parts[0], Virtual):
        lead = parts[0].text if parts and isinstance(parts[0], Text) else ""
        problems.append("it does not start with <|VIRTUAL_PROMPT_0|>"
                        + (f" (text {lead[:30]!r} comes first)" if lead else ""))
    return problems


# ----------------------------------------------------------------------------- export

def _base_config(name_or_path: str):
    """The base model's transformers config when it is on this machine (never downloads or converts)."""
    try:
        from transformers import AutoConfig

        from promptray.platform.model.hub import BUILTIN_MODELS, default_cache_dir

        if name_or_path in BUILTIN_MODELS:  # only if already converted into the default cache
            source = default_cache_dir() / "models" / name_or_path
            if not (source / "config.json").is_file():
                return None
        else:
            local = Path(name_or_path).expanduser()
            source = local if (local / "config.json").is_file() else name_or_path
        config = AutoConfig.from_pretrained(str(source), local_files_only=True)
        return config.get_text_config() if hasattr(config, "get_text_config") else config
    except Exception:  # not available offline, not a model folder, ...: the counts are optional
        return None


def _first_attr(config, names: tuple[str, ...]) -> Optional[int]:
    for n in names:
        value = getattr(config, n, None)
        if isinstance(value, int):
            return value
    return None


def export_peft_adapter(table_uri_or_table: TableLike, taskname: str, out_dir: str | os.PathLike,
                        base_model_name_or_path: Optional[str] = None, version: Optional[str] = None,
                        *, force: bool = False) -> Path:
    """Write one task of a prompt table as a PEFT prompt-tuning adapter folder; returns the folder.

    Files: `adapter_config.json` (PROMPT_TUNING, CAUSAL_LM, inference mode), `adapter_model.safetensors`
    (`prompt_embeddings` (n, H) float32) and `promptray_task.json` (promptray metadata, ignored by PEFT).
    `base_model_name_or_path` goes into the adapter config (default: the name in the task's base-model
    fingerprint); its config, when on this machine, supplies num_attention_heads / num_layers.
    Only templates with one `<|VIRTUAL_PROMPT_0|>` at the very start can be expressed, since PEFT prepends
    all virtual tokens; `force=True` exports other templates anyway (rows prepended in order) with a warning.
    """
    table = as_table(table_uri_or_table)
    prompt = table.get(taskname, version)
    layout = _check_export_layout(prompt, force)
    base_name = base_model_name_or_path or prompt.base_model.name
    config = _export_base_config(base_name, prompt)
    emb = prompt.embeddings.detach().to("cpu", torch.float32).contiguous()  # (n, H)
    source = (getattr(table_uri_or_table, "uri", None) if isinstance(table_uri_or_table, PromptTable)
              else os.fspath(table_uri_or_table))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({WEIGHT_KEY: emb}, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    (out / ADAPTER_CONFIG).write_text(json.dumps(_adapter_config(base_name, config, emb), indent=2,
                                                 sort_keys=True) + "\n")
    (out / TASK_FILE).write_text(json.dumps(_task_meta(prompt, source, emb, layout), indent=2,
                                            sort_keys=True) + "\n")
    return out


def _check_export_layout(prompt: TaskPrompt, force: bool) -> list[str]:
    """Why the task's template has no PEFT equivalent ([] when it has one): an error, or with `force` a warning."""
    template = TaskTemplate.model_validate(prompt.template)
    layout = peft_layout_problems(template)
    if prompt.encoding.add_bos:
        layout.append("it was trained with add_bos=true (a BOS token before the virtual tokens), which PEFT "
                      "cannot express")
    if layout and not force:
        raise ConfigError(
            [f"task {prompt.taskname!r} template {template.prompt_template!r} cannot be expressed as a PEFT "
             "adapter: " + "; ".join(layout) + ". PEFT prompt tuning prepends all num_virtual_tokens virtual "
             "tokens before the input, so only a single <|VIRTUAL_PROMPT_0|> at the very start of the template "
             "maps to it, without a BOS token before it. To export anyway (all virtual tokens then go first, "
             "which changes the task's behaviour), pass force=True (CLI: --force)"], title="cannot export PEFT adapter")
    if layout:
        log.warning("exporting task %r to PEFT anyway (force): its template %r cannot be expressed exactly: %s. "
                    "PEFT will prepend all %d virtual tokens, so the adapter does not behave like the promptray task",
                    prompt.taskname, template.prompt_template, "; ".join(layout), prompt.num_virtual_tokens)
    return layout


def _export_base_config(base_name: str, prompt: TaskPrompt):
    """The base model's config when this machine has it (None otherwise); its hidden size must be the task's."""
    fp, config = prompt.base_model, _base_config(base_name)
    hidden = _first_attr(config, ("hidden_size", "n_embd", "d_model"))
    if hidden is not None and hidden != fp.hidden_size:
        raise ConfigError(f"base_model_name_or_path {base_name!r} has hidden size {hidden} but task "
                          f"{prompt.taskname!r} was trained on {fp.name!r} with hidden size {fp.hidden_size}; "
                          "name the base model the task was trained on", title="cannot export PEFT adapter")
    return config


def _adapter_config(base_name: str, config, emb: torch.Tensor) -> dict:
    """PEFT's adapter_config.json of a PROMPT_TUNING adapter with the (n, H) prompt `emb`."""
    return {
        "auto_mapping": None, "base_model_name_or_path": base_name, "inference_mode": True,
        "modules_to_save": None,
        "num_attention_heads": _first_attr(config, ("num_attention_heads", "n_head", "num_heads")),
        "num_layers": _first_attr(config, ("num_hidden_layers", "n_layer", "num_layers")),
        "num_transformer_submodules": 1, "num_virtual_tokens": int(emb.shape[0]), "peft_type": "PROMPT_TUNING",
        "prompt_tuning_init": "RANDOM", "prompt_tuning_init_text": None, "revision": None,
        "task_type": "CAUSAL_LM", "token_dim": int(emb.shape[1]), "tokenizer_kwargs": None,
        "tokenizer_name_or_path": None,
    }


def _task_meta(prompt: TaskPrompt, source: Optional[str], emb: torch.Tensor, layout: list[str]) -> dict:
    """promptray_task.json: what PEFT's files have no place for, so an import restores the task whole."""
    return {"format": TASK_FILE_FORMAT, "taskname": prompt.taskname, "version": prompt.version, "table": source,
            "template": prompt.template, "style": prompt.style, "metrics": prompt.metrics, "source": prompt.source,
            "created_at": prompt.created_at, "base_model": prompt.base_model.to_dict(),
            "encoding": prompt.encoding.to_dict(),
            "embeddings_sha256": embedding_sha256(emb), "peft_compatible": not layout, "forced": bool(layout)}

"""Hugging Face PEFT interop: export a table task as a PEFT prompt-tuning adapter, import one into a table.

A PEFT prompt-tuning adapter is a folder with `adapter_config.json` and `adapter_model.safetensors`, whose
one tensor `prompt_embeddings` (num_virtual_tokens, token_dim) PEFT prepends to the input embeddings of
every sequence. That is a promptray template with one `<|VIRTUAL_PROMPT_0|>` marker at its very start; a
template with several markers (or text before the marker) has no PEFT equivalent.

Export writes, next to the two PEFT files, `promptray_task.json` with what PEFT has no place for (task
name, table version, template, base-model fingerprint, metrics, source), so an export imported back into a
table loses nothing. PEFT ignores that file; nothing promptray-specific goes into `adapter_config.json`, so
`PeftModel.from_pretrained` loads the folder without warnings. peft itself is never imported here.

Import accepts PEFT `PROMPT_TUNING` adapters and `P_TUNING` ones: PEFT saves a p-tuning adapter's
`prompt_embeddings` as the prompt encoder's *outputs* (`get_prompt_embedding_to_save`), which is exactly
the matrix PEFT prepends at inference, so both kinds become a frozen (n, H) prompt in the table.

Template of an imported task, first match wins:
  1. `prompt_template` passed by the caller: exactly one `<|VIRTUAL_PROMPT_0|>`, at its very start.
  2. the template recorded in `promptray_task.json` by `export_peft_adapter` (taskname replaced). A
     forced multi-marker export is restored as it was only while the adapter's embeddings are the
     exported ones (sha256 match); otherwise rule 3 applies, with a warning.
  3. `DEFAULT_TEMPLATE` = ``"<|VIRTUAL_PROMPT_0|>{input}{output}"`` with answer_field ``"output"``: the
     virtual tokens, then the record's `input` text exactly as PEFT would see it (no separator added);
     `output` is the answer (the reference at inference, never fed). Records need only `input` at
     inference. As everywhere in promptray, the inference prompt has its trailing whitespace removed.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from promptray.platform.errors import BaseModelMismatchError, ConfigError
from promptray.platform.fingerprint import BaseModelFingerprint, embedding_sha256, fingerprint_model
from promptray.platform.prompt_table import PromptTable, TaskPrompt
from promptray.platform.templates import TaskTemplate, Text, Virtual, parse_template, validate_task_templates

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


def _table(table_uri_or_table: TableLike) -> PromptTable:
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

        from promptray.platform.hub import BUILTIN_MODELS, default_cache_dir

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
    table = _table(table_uri_or_table)
    prompt = table.get(taskname, version)
    template = TaskTemplate.model_validate(prompt.template)
    layout = peft_layout_problems(template)
    if layout and not force:
        raise ConfigError(
            [f"task {taskname!r} template {template.prompt_template!r} cannot be expressed as a PEFT adapter: "
             + "; ".join(layout) + ". PEFT prompt tuning prepends all num_virtual_tokens virtual tokens before "
             "the input, so only a single <|VIRTUAL_PROMPT_0|> at the very start of the template maps to it. "
             "Pass force=True to export anyway (all virtual tokens then go first, which changes the task's "
             "behaviour)"], title="cannot export PEFT adapter")
    if layout:
        warnings.warn(f"exporting task {taskname!r} to PEFT with force=True although its template "
                      f"{template.prompt_template!r} " + "; ".join(layout) + ": PEFT will prepend all "
                      f"{prompt.num_virtual_tokens} virtual tokens, so the adapter does not behave like the "
                      "promptray task", UserWarning, stacklevel=2)

    fp = prompt.base_model
    base_name = base_model_name_or_path or fp.name
    config = _base_config(base_name)
    if config is not None:
        hidden = _first_attr(config, ("hidden_size", "n_embd", "d_model"))
        if hidden is not None and hidden != fp.hidden_size:
            raise ConfigError(f"base_model_name_or_path {base_name!r} has hidden size {hidden} but task "
                              f"{taskname!r} was trained on {fp.name!r} with hidden size {fp.hidden_size}; "
                              "name the base model the task was trained on", title="cannot export PEFT adapter")
    emb = prompt.embeddings.detach().to("cpu", torch.float32).contiguous()  # (n, H)
    adapter_config = {
        "auto_mapping": None,
        "base_model_name_or_path": base_name,
        "inference_mode": True,
        "modules_to_save": None,
        "num_attention_heads": _first_attr(config, ("num_attention_heads", "n_head", "num_heads")),
        "num_layers": _first_attr(config, ("num_hidden_layers", "n_layer", "num_layers")),
        "num_transformer_submodules": 1,
        "num_virtual_tokens": int(emb.shape[0]),
        "peft_type": "PROMPT_TUNING",
        "prompt_tuning_init": "RANDOM",
        "prompt_tuning_init_text": None,
        "revision": None,
        "task_type": "CAUSAL_LM",
        "token_dim": int(emb.shape[1]),
        "tokenizer_kwargs": None,
        "tokenizer_name_or_path": None,
    }
    task_meta = {
        "format": TASK_FILE_FORMAT,
        "taskname": prompt.taskname,
        "version": prompt.version,
        "table": (getattr(table_uri_or_table, "uri", None) if isinstance(table_uri_or_table, PromptTable)
                  else os.fspath(table_uri_or_table)),
        "template": prompt.template,
        "style": prompt.style,
        "metrics": prompt.metrics,
        "source": prompt.source,
        "created_at": prompt.created_at,
        "base_model": fp.to_dict(),
        "embeddings_sha256": embedding_sha256(emb),
        "peft_compatible": not layout,
        "forced": bool(layout),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({WEIGHT_KEY: emb}, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    (out / ADAPTER_CONFIG).write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
    (out / TASK_FILE).write_text(json.dumps(task_meta, indent=2, sort_keys=True) + "\n")
    return out


# ----------------------------------------------------------------------------- import

def _fail(problem: str) -> ConfigError:
    return ConfigError(problem, title="cannot import PEFT adapter")


def _read_adapter(adapter_dir: Path) -> tuple[dict, torch.Tensor]:
    """(adapter config, prompt embeddings (n, H) float32) of a PEFT prompt-learning adapter folder."""
    if not adapter_dir.is_dir():
        raise _fail(f"PEFT adapter folder {str(adapter_dir)!r} does not exist (or is not a folder); pass the "
                    "folder written by PeftModel.save_pretrained")
    cfg_path, weights = adapter_dir / ADAPTER_CONFIG, adapter_dir / ADAPTER_WEIGHTS
    if not cfg_path.is_file():
        raise _fail(f"{str(adapter_dir)!r} has no {ADAPTER_CONFIG}; is it a PEFT adapter folder?")
    try:
        config = json.loads(cfg_path.read_text())
    except ValueError as e:
        raise _fail(f"{str(cfg_path)!r} is not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise _fail(f"{str(cfg_path)!r} is not a JSON object")
    peft_type = config.get("peft_type")
    if peft_type not in IMPORTABLE_PEFT_TYPES:
        raise _fail(f"{str(cfg_path)!r} has peft_type {peft_type!r}; only {' and '.join(IMPORTABLE_PEFT_TYPES)} "
                    "adapters are soft prompts that can be imported")
    if config.get("task_type") not in (None, "CAUSAL_LM"):
        raise _fail(f"{str(cfg_path)!r} has task_type {config.get('task_type')!r}; only CAUSAL_LM adapters "
                    "can be imported")
    if config.get("num_transformer_submodules") not in (None, 1):
        raise _fail(f"{str(cfg_path)!r} has num_transformer_submodules {config['num_transformer_submodules']!r};"
                    " only decoder-only (1) adapters can be imported")
    n, dim = config.get("num_virtual_tokens"), config.get("token_dim")
    if not (isinstance(n, int) and n >= 1 and isinstance(dim, int) and dim >= 1):
        raise _fail(f"{str(cfg_path)!r} needs positive integers num_virtual_tokens and token_dim, got "
                    f"{n!r} and {dim!r}")
    if not weights.is_file():
        if (adapter_dir / ADAPTER_WEIGHTS_PICKLE).is_file():
            raise _fail(f"{str(adapter_dir)!r} has {ADAPTER_WEIGHTS_PICKLE} (pickle) but no {ADAPTER_WEIGHTS}; "
                        "only safetensors adapters are read (pickle files can run code). Re-save it with "
                        "PeftModel.save_pretrained(..., safe_serialization=True)")
        raise _fail(f"{str(adapter_dir)!r} has no {ADAPTER_WEIGHTS}; pass the folder written by "
                    "PeftModel.save_pretrained")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise _fail(f"{str(weights)!r} is not a readable safetensors file: {e}") from e
    if WEIGHT_KEY not in tensors:
        raise _fail(f"{str(weights)!r} has no tensor {WEIGHT_KEY!r} (it has {sorted(tensors)}); it is not a "
                    "PEFT prompt-learning adapter")
    emb = tensors[WEIGHT_KEY]
    if emb.dim() != 2 or not emb.is_floating_point() or tuple(emb.shape) != (n, dim):
        raise _fail(f"{str(weights)!r}: {WEIGHT_KEY!r} is {tuple(emb.shape)} {emb.dtype} but the adapter config "
                    f"says num_virtual_tokens={n}, token_dim={dim}; expected a ({n}, {dim}) float tensor")
    if not bool(torch.isfinite(emb.float()).all()):
        raise _fail(f"{str(weights)!r}: {WEIGHT_KEY!r} contains NaN or infinite values")
    return config, emb.to(torch.float32).contiguous()


def _export_meta(adapter_dir: Path) -> Optional[dict]:
    path = adapter_dir / TASK_FILE
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except ValueError:
        warnings.warn(f"ignoring {str(path)!r}: not valid JSON", UserWarning, stacklevel=3)
        return None
    if not isinstance(meta, dict) or meta.get("format") != TASK_FILE_FORMAT or not isinstance(meta.get("template"), dict):
        warnings.warn(f"ignoring {str(path)!r}: not a {TASK_FILE_FORMAT!r} file", UserWarning, stacklevel=3)
        return None
    return meta


def _template_from_export(meta: dict, taskname: str, n: int, unchanged: bool) -> Optional[dict]:
    """The exported template (renamed to `taskname`) when it still describes this adapter, else None."""
    template = {**meta["template"], "taskname": taskname}
    try:
        t = TaskTemplate.model_validate(template)
    except Exception:
        warnings.warn(f"ignoring the template in {TASK_FILE}: it is not a valid task template", UserWarning,
                      stacklevel=3)
        return None
    if t.total_virtual_tokens != n:
        warnings.warn(f"ignoring the template in {TASK_FILE}: it has {t.total_virtual_tokens} virtual tokens but "
                      f"the adapter has {n}; using the default template", UserWarning, stacklevel=3)
        return None
    if peft_layout_problems(t) and not unchanged:
        warnings.warn(f"ignoring the template in {TASK_FILE} ({t.prompt_template!r}): it is not PEFT's layout "
                      "and the adapter's embeddings changed since the export; using the default template",
                      UserWarning, stacklevel=3)
        return None
    return template


def _build_template(taskname: str, n: int, prompt_template: Optional[str], answer_field: Optional[str],
                    truncate_field: Optional[str], answer_only_loss: bool) -> dict:
    if prompt_template is None:
        prompt_template, answer_field = DEFAULT_TEMPLATE, answer_field or DEFAULT_ANSWER_FIELD
    t = TaskTemplate(taskname=taskname, prompt_template=prompt_template, total_virtual_tokens=n,
                     virtual_token_splits=[n], truncate_field=truncate_field, answer_only_loss=answer_only_loss,
                     answer_field=answer_field)
    layout = peft_layout_problems(t)
    if layout:
        raise _fail(f"prompt_template {prompt_template!r} " + "; ".join(layout) + ": a PEFT adapter prepends all "
                    f"{n} virtual tokens, so the template must have exactly one <|VIRTUAL_PROMPT_0|>, at its very "
                    "start")
    validate_task_templates([t], where="prompt_template")
    return t.model_dump()


def import_peft_adapter(adapter_dir: str | os.PathLike, table_uri: TableLike, taskname: str,
                        prompt_template: Optional[str] = None, base_model: Optional[str] = None,
                        answer_field: Optional[str] = None, *, truncate_field: Optional[str] = None,
                        answer_only_loss: bool = False) -> str:
    """Publish a PEFT prompt-tuning (or p-tuning) adapter as task `taskname` of a table; returns the version.

    The base model (`base_model`, else the adapter's `base_model_name_or_path`) is loaded to fingerprint
    it and to check that its hidden size equals the adapter's token_dim. Template rule: see the module
    docstring (caller's template, else the one exported in promptray_task.json, else DEFAULT_TEMPLATE).
    The prompt is published with style "imported" and source {"peft_adapter": <folder>, ...}.
    """
    from promptray.platform.hub import load_base_model

    folder = Path(adapter_dir).expanduser()
    config, emb = _read_adapter(folder)
    n, dim = emb.shape
    meta = _export_meta(folder)
    name = base_model or config.get("base_model_name_or_path")
    if not name:
        raise _fail(f"{str(folder / ADAPTER_CONFIG)!r} has no base_model_name_or_path; pass base_model= "
                    "(the model the adapter was trained on)")
    lm, _ = load_base_model(str(name))
    fingerprint = fingerprint_model(lm, str(name))
    del lm
    if fingerprint.hidden_size != dim:
        raise BaseModelMismatchError(
            f"PEFT adapter {str(folder)!r} has token_dim {dim} but base model {str(name)!r} has hidden size "
            f"{fingerprint.hidden_size}; the adapter was trained on another model. Pass base_model= naming "
            "the model it was trained on")

    unchanged = meta is not None and meta.get("embeddings_sha256") == embedding_sha256(emb)
    if meta is not None and isinstance(meta.get("base_model"), dict) and unchanged:
        try:
            exported_on = BaseModelFingerprint.from_dict(meta["base_model"])
            if exported_on.mismatches(fingerprint):
                warnings.warn(f"the adapter was exported from a task trained on {exported_on.name!r}, which "
                              f"differs from {str(name)!r} (" + "; ".join(exported_on.mismatches(fingerprint))
                              + "); importing against the latter", UserWarning, stacklevel=2)
        except (KeyError, TypeError):
            pass
    template = None
    if prompt_template is None and meta is not None:
        template = _template_from_export(meta, taskname, int(n), unchanged)
    if template is None:
        template = _build_template(taskname, int(n), prompt_template, answer_field, truncate_field,
                                   answer_only_loss)

    source: dict[str, Any] = {"peft_adapter": str(folder.resolve()), "peft_type": config["peft_type"]}
    if config.get("peft_version"):
        source["peft_version"] = config["peft_version"]
    if meta is not None:
        source["promptray_export"] = {k: meta.get(k) for k in ("table", "taskname", "version")}
    metrics = meta.get("metrics", {}) if unchanged and isinstance(meta.get("metrics"), dict) else {}
    prompt = TaskPrompt(taskname=taskname, embeddings=emb, template=template, style="imported",
                        base_model=fingerprint, metrics=metrics, source=source)
    return _table(table_uri).publish([prompt])[taskname]

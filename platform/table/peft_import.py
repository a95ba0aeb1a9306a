"""Import a Hugging Face PEFT prompt-tuning adapter folder into a prompt table (export: `peft_export`).

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

Encoding of an imported task (see `data/encoding.py`): add_bos / add_eos as recorded in an unchanged
`promptray_task.json`, else the defaults (no BOS: PEFT puts the virtual tokens first); the tokenizer
fingerprint is that of the base model imported against.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from promptray.platform.data.encoding import TaskEncoding, TokenizerFingerprint, fingerprint_tokenizer
from promptray.platform.data.templates import TaskTemplate, validate_task_templates
from promptray.platform.errors import BaseModelMismatchError, ConfigError
from promptray.platform.model.fingerprint import BaseModelFingerprint, embedding_sha256, fingerprint_model
from promptray.platform.table.peft_export import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    ADAPTER_WEIGHTS_PICKLE,
    DEFAULT_ANSWER_FIELD,
    DEFAULT_TEMPLATE,
    IMPORTABLE_PEFT_TYPES,
    TASK_FILE,
    TASK_FILE_FORMAT,
    WEIGHT_KEY,
    TableLike,
    as_table,
    peft_layout_problems,
)
from promptray.platform.table.table import TaskPrompt


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
    if not isinstance(meta, dict) or meta.get("format") != TASK_FILE_FORMAT or \
            not isinstance(meta.get("template"), dict):
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
    folder = Path(adapter_dir).expanduser()
    config, emb = _read_adapter(folder)  # emb: (n, H)
    n = int(emb.shape[0])
    meta = _export_meta(folder)
    fingerprint, tokenizer = _base_fingerprint(folder, base_model or config.get("base_model_name_or_path"),
                                               int(emb.shape[1]))
    unchanged = meta is not None and meta.get("embeddings_sha256") == embedding_sha256(emb)
    if unchanged:
        _warn_other_base(meta, fingerprint)
    template = None
    if prompt_template is None and meta is not None:
        template = _template_from_export(meta, taskname, n, unchanged)
    if template is None:
        template = _build_template(taskname, n, prompt_template, answer_field, truncate_field, answer_only_loss)
    metrics = meta.get("metrics", {}) if unchanged and isinstance(meta.get("metrics"), dict) else {}
    prompt = TaskPrompt(taskname=taskname, embeddings=emb, template=template, style="imported",
                        base_model=fingerprint, metrics=metrics, source=_import_source(folder, config, meta),
                        encoding=_encoding(meta if unchanged else None, tokenizer))
    return as_table(table_uri).publish([prompt])[taskname]


def _encoding(meta: Optional[dict], tokenizer: TokenizerFingerprint) -> TaskEncoding:
    """The imported task's encoding: add_bos/add_eos as exported (the defaults for a plain PEFT adapter, whose
    inputs PEFT never starts with a BOS before the virtual tokens), the importing base model's tokenizer."""
    exported = TaskEncoding.from_dict(meta.get("encoding") if meta and isinstance(meta.get("encoding"), dict)
                                      else None)
    if exported.tokenizer is not None and exported.tokenizer.mismatches(tokenizer):
        warnings.warn(f"the adapter was exported from a task trained with tokenizer {exported.tokenizer.name!r}, "
                      f"which differs from {tokenizer.name!r} (" + "; ".join(exported.tokenizer.mismatches(tokenizer))
                      + "); importing with the latter", UserWarning, stacklevel=3)
    return TaskEncoding(exported.add_bos, exported.add_eos, tokenizer)


def _base_fingerprint(folder: Path, name: Optional[str], dim: int
                      ) -> tuple[BaseModelFingerprint, TokenizerFingerprint]:
    """Fingerprints of the base model `name` (whose hidden size must be the adapter's token_dim `dim`) and
    of its tokenizer."""
    from promptray.platform.model.hub import load_base_model

    if not name:
        raise _fail(f"{str(folder / ADAPTER_CONFIG)!r} has no base_model_name_or_path; pass base_model= "
                    "(CLI: --base-model), the model the adapter was trained on")
    lm, tok = load_base_model(str(name))
    fingerprint, tokenizer = fingerprint_model(lm, str(name)), fingerprint_tokenizer(tok)
    del lm
    if fingerprint.hidden_size != dim:
        raise BaseModelMismatchError(
            f"PEFT adapter {str(folder)!r} has token_dim {dim} but base model {str(name)!r} has hidden size "
            f"{fingerprint.hidden_size}; the adapter was trained on another model. Pass base_model= "
            "(CLI: --base-model) naming the model it was trained on")
    return fingerprint, tokenizer


def _warn_other_base(meta: dict, fingerprint: BaseModelFingerprint) -> None:
    """Warn when a promptray export was trained on another base model than the one imported against."""
    if not isinstance(meta.get("base_model"), dict):
        return
    try:
        exported_on = BaseModelFingerprint.from_dict(meta["base_model"])
    except (KeyError, TypeError):
        return
    if exported_on.mismatches(fingerprint):
        warnings.warn(f"the adapter was exported from a task trained on {exported_on.name!r}, which differs "
                      f"from {fingerprint.name!r} (" + "; ".join(exported_on.mismatches(fingerprint))
                      + "); importing against the latter", UserWarning, stacklevel=3)


def _import_source(folder: Path, config: dict, meta: Optional[dict]) -> dict[str, Any]:
    """The imported prompt's `source`: the adapter folder, PEFT type and version, the export it came from."""
    source: dict[str, Any] = {"peft_adapter": str(folder.resolve()), "peft_type": config["peft_type"]}
    if config.get("peft_version"):
        source["peft_version"] = config["peft_version"]
    if meta is not None:
        source["promptray_export"] = {k: meta.get(k) for k in ("table", "taskname", "version")}
    return source

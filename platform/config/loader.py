"""The one config loader: YAML file or dict -> dotted overrides -> interpolation -> validation -> one report.

Training (`schema.load_config`), the Ray job and search (`promptray.jobs.config.load_job_config`), `promptray
infer` (`promptray.platform.generation.infer_config.load_infer_config`) and the SDK (`promptray.sdk.spec`) read
their configs with it, so every entry point accepts the same input and reports problems the same way:

1. `open_config`: a YAML file, a dict, or nothing (an empty config); a file that does not exist or is not YAML
   is a ConfigError.
2. `resolve_config`: the dotted overrides (overrides.py), then OmegaConf's `${...}` interpolation (after the
   overrides, so `name=x` reaches `${name}.nemo`). NeMo's `???` (a value the user must give) is removed and
   reported as a problem unless another problem already names the key; `key: ...` means "the defaults"
   (the spec's `trainer: ...`).
3. `validate_config`: the pydantic schema, then the schema's checks across keys; every problem is reported
   at once in one ConfigError, each as "dotted.key: problem (value); fix" with a did-you-mean for unknown keys.
   The CLI prints it and exits with status 2.
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional, TypeVar, Union, get_args

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, ValidationError

from promptray.platform.config.overrides import Overrides, apply_overrides
from promptray.platform.errors import ConfigError

Model = TypeVar("Model", bound=BaseModel)
Source = Union[str, Path, dict, None]
UNSET = "the file leaves it to be given (???)"
REQUIRED = "required, not given"


def open_config(source: Source) -> DictConfig:
    """A YAML file (path), a dict, or None (an empty config) as an OmegaConf DictConfig, not yet resolved.
    Raises ConfigError when the file does not exist, is not YAML, or holds something other than a mapping."""
    if source is not None and not isinstance(source, dict) and not Path(source).is_file():
        raise ConfigError(f"config: file {str(source)!r} does not exist (cwd {Path.cwd()}); check the path")
    try:
        conf = OmegaConf.create(source or {}) if source is None or isinstance(source, dict) else \
            OmegaConf.load(source)
    except (OmegaConfBaseException, yaml.YAMLError, ValueError) as e:
        raise ConfigError(f"config: cannot read {_name(source)}: {_first_line(e)}") from None
    if not isinstance(conf, DictConfig):
        raise ConfigError(f"config: {_name(source)} holds a list, not a mapping of keys; give KEY: VALUE lines")
    return conf


def resolve_config(conf: DictConfig, overrides: Overrides = None) -> tuple[dict, list[str]]:
    """Apply `overrides` to `conf` (in place), resolve `${...}`, drop `???` and `...` values. Returns the plain
    dict and the problems found (overrides that cannot be applied, keys left `???`); raises ConfigError when
    an interpolation cannot be resolved."""
    problems = apply_overrides(conf, overrides)
    try:
        raw = OmegaConf.to_container(conf, resolve=True, throw_on_missing=False)
    except OmegaConfBaseException as e:
        raise ConfigError(f"config: cannot resolve it: {_first_line(e)}; check the ${{...}} references") from None
    unset: list[str] = []
    raw = _drop_placeholders(raw, "", unset)
    return raw, problems + [f"{k}: {UNSET}; set {k}=VALUE" for k in unset]


def read_config(source: Source, overrides: Overrides = None) -> tuple[dict, list[str]]:
    """`open_config` then `resolve_config`: the plain dict of `source` with `overrides`, and its problems."""
    return resolve_config(open_config(source), overrides)


def validate_config(raw: dict, schema: type[Model], problems: Optional[list[str]] = None, *,
                    cross: Optional[Callable[[Model], list[str]]] = None,
                    extra_keys: Callable[[str], list[str]] = lambda section: []) -> Model:
    """`raw` as a `schema` instance, or one ConfigError listing `problems` (those found so far), the schema's
    problems and those of `cross` (checks across keys of the validated config; the checks that read a key
    with an invalid value are left out: they would report it twice). `extra_keys(section)`: more names the
    did-you-mean of an unknown key in that dotted section may suggest (keys accepted and ignored)."""
    problems, cfg, invalid = list(problems or []), None, set()
    try:
        cfg = schema.model_validate(raw)
    except ValidationError as e:
        problems += describe_errors(e.errors(), model_sections(schema), extra_keys)
        if cross is not None:
            cfg, invalid = _validate_without(raw, e.errors(), schema)
    if cfg is not None and cross is not None:
        problems += [p for p in cross(cfg) if not any(re.search(rf"\b{re.escape(k)}\b", p) for k in invalid)]
    if problems or cfg is None:
        raise ConfigError(unique_problems(problems))
    return cfg


def unique_problems(problems: list[str]) -> list[str]:
    """`problems` less those of a key left `???` or required and not given when another problem already names
    the key (e.g. "model.language_model_path: not set; give ...", which says more)."""
    def vague(p: str) -> bool:
        return UNSET in p or REQUIRED in p

    named = {p.split(":", 1)[0] for p in problems if not vague(p)}
    return [p for p in problems if not vague(p) or p.split(":", 1)[0] not in named]


def model_sections(schema: type[BaseModel], prefix: str = "") -> dict[str, type[BaseModel]]:
    """Each nested section's dotted key -> its model, from the field types (`a.*` for the values of a
    dict or list of sections); the did-you-mean of unknown keys reads their fields."""
    out: dict[str, type[BaseModel]] = {prefix: schema}
    for name, field in schema.model_fields.items():
        path = f"{prefix}.{name}" if prefix else name
        for model, many in _models_in(field.annotation):
            out.update(model_sections(model, f"{path}.*" if many else path))
    return out


def _models_in(annotation: Any, many: bool = False) -> list[tuple[type[BaseModel], bool]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [(annotation, many)]
    origin = getattr(annotation, "__origin__", None)
    many = many or origin in (dict, list)
    return [m for arg in get_args(annotation) for m in _models_in(arg, many)]


def _drop_placeholders(raw: Any, prefix: str, unset: list[str]) -> Any:
    """`raw` without NeMo's `???` values (their dotted keys are added to `unset`) and without `key: ...`
    (the spec's "the defaults"; a prompt_template may be literally '...')."""
    if not isinstance(raw, dict):
        return raw
    out = {}
    for k, v in raw.items():
        if v == "???":
            unset.append(f"{prefix}{k}")
        elif not (v == "..." and k != "prompt_template"):
            out[k] = _drop_placeholders(v, f"{prefix}{k}.", unset)
    return out


def _validate_without(raw: dict, errors: list, schema: type[Model]) -> tuple[Optional[Model], set[str]]:
    """Validate `raw` with every key that has an error removed (defaults stand in for them), so the cross-key
    checks can still run. Returns (config or None, how problems name the removed keys whose values were invalid)."""
    raw, paths, invalid = copy.deepcopy(raw), [], set()
    for err in errors:
        path, node = [], raw
        for part in err.get("loc", ()):
            if not isinstance(node, dict):
                break
            if part not in node:
                path = []
                break
            path.append(part)
            node = node[part]
        if path:
            paths.append(path)
            if err.get("type") != "extra_forbidden":  # a distinctive key name, else its dotted path
                invalid.add(path[-1] if "_" in path[-1] else ".".join(path))
    for path in paths:
        parent = raw
        for part in path[:-1]:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if isinstance(parent, dict):
            parent.pop(path[-1], None)
    try:
        return schema.model_validate(raw), invalid
    except ValidationError:
        return None, invalid


# ----------------------------------------------------------------------------- pydantic errors as problems

_BOUNDS = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="), "less_than": ("lt", "<"),
           "less_than_equal": ("le", "<=")}
_UNION_TAG = re.compile(r"^(int|float|str|bool|list|dict|none)$|\[")  # loc parts pydantic adds for a Union


def describe_errors(errors: list, sections: dict[str, type[BaseModel]],
                    extra_keys: Callable[[str], list[str]] = lambda section: []) -> list[str]:
    """Pydantic's errors, one problem per key: a value that fits no member of a Union (e.g. int or float) is
    one problem under the key's own name. `sections`: as `model_sections` gives them (for did-you-mean)."""
    by_key: dict[tuple, list[dict]] = {}
    for err in errors:
        loc = tuple(p for i, p in enumerate(err.get("loc", ())) if i == 0 or not _UNION_TAG.search(str(p)))
        by_key.setdefault(loc, []).append({**err, "loc": loc})
    return [describe_error(errs[0], sections, extra_keys) if len(errs) == 1
            else _describe_union(errs, sections, extra_keys) for errs in by_key.values()]


def _describe_union(errs: list[dict], sections: dict, extra_keys: Callable[[str], list[str]]) -> str:
    """A value that fits none of a Union's members (their constraint errors say more, when there are some)."""
    bounded = [e for e in errs if e.get("type") in _BOUNDS or e.get("type") == "value_error"]
    if bounded:
        return describe_error(bounded[0], sections, extra_keys)
    value = repr(errs[0].get("input"))
    kinds = " or ".join(dict.fromkeys(e["type"].removesuffix("_type").removesuffix("_parsing") for e in errs))
    return f"{'.'.join(map(str, errs[0]['loc']))}: got {value[:80]}; give a value of type {kinds}"


def describe_error(err: dict, sections: Optional[dict[str, type[BaseModel]]] = None,
                   extra_keys: Callable[[str], list[str]] = lambda section: []) -> str:
    """One pydantic error as 'dotted.key: problem (got value); fix' (a bound as 'got V; use a value >= B')."""
    loc = ".".join(str(x) for x in err.get("loc", ()))
    if err.get("type") == "extra_forbidden":
        section, key = loc.rsplit(".", 1) if "." in loc else ("", loc)
        hint = _suggest(key, section, sections or {}, extra_keys)
        return f"{loc}: unknown key{hint}; remove it or check the spelling"
    if err.get("type") == "missing":
        return f"{loc}: {REQUIRED}; set {loc}"
    value = repr(err.get("input"))
    value = value if len(value) <= 80 else value[:80] + "..."
    if err.get("type") in _BOUNDS:
        name, op = _BOUNDS[err["type"]]
        return f"{loc}: got {value}; use a value {op} {err.get('ctx', {}).get(name)}"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{loc}: {msg} (got {value})"


def _suggest(key: str, section: str, sections: dict, extra_keys: Callable[[str], list[str]]) -> str:
    model = sections.get(section) or sections.get(section.rpartition(".")[0] + ".*")
    known = (list(model.model_fields) if model else []) + extra_keys(section)
    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _name(source: Source) -> str:
    return "(dict)" if isinstance(source, dict) else "(empty)" if source is None else repr(str(source))


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__

"""Dotted overrides (`model.optim.lr=0.01`) applied to a config: the one implementation that `promptray train`,
`promptray infer`, `python -m promptray.jobs.train` / `.search` and the SDK use.

Each override sets one key; a value is YAML (`[a,b]`, `{min: 8, max: 32}`, `null`). Rules:
- a list entry is addressed by its index: `model.task_templates.0.total_virtual_tokens=8`;
- a dict into a dict merges (`model.optim={lr: 0.1}` keeps the other optim keys); a value of another container
  type (a dict over a list, a list over a dict) replaces the old value;
- an index past the end of a list, or a name where a list wants an index, is a problem naming the key and
  how to write it. Problems are returned (all of them), never raised one by one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Union

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigTypeError, OmegaConfBaseException

Overrides = Union[Mapping[str, Any], Sequence[str], str, None]


def parse_overrides(overrides: Overrides) -> tuple[list[tuple[str, Any]], list[str]]:
    """[(dotted key, value)] from a {key: value} mapping (values kept as they are) or "key=value" strings
    (values read as YAML, as OmegaConf reads a dotlist); and the problems of strings that are not KEY=VALUE."""
    if not overrides:
        return [], []
    if isinstance(overrides, Mapping):
        return [(str(k), v) for k, v in overrides.items()], []
    pairs, problems = [], []
    for item in [overrides] if isinstance(overrides, str) else overrides:
        key, eq, text = str(item).partition("=")
        if not eq or not key.strip():
            problems.append(f"override {item!r} is not KEY=VALUE (e.g. trainer.max_steps=100)")
            continue
        try:
            value = OmegaConf.to_container(OmegaConf.from_dotlist([f"v={text}"]), resolve=False)["v"]
        except OmegaConfBaseException as e:
            problems.append(f"{key.strip()}: cannot read the value {text!r}: {_first_line(e)}")
            continue
        pairs.append((key.strip(), value))
    return pairs, problems


def apply_overrides(conf: DictConfig, overrides: Overrides) -> list[str]:
    """Apply `overrides` to `conf` in place; returns every problem (an override with a problem is skipped)."""
    pairs, problems = parse_overrides(overrides)
    for key, value in pairs:
        problem = _update(conf, key, value)
        if problem:
            problems.append(problem)
    return problems


def _update(conf: DictConfig, key: str, value: Any) -> str:
    try:
        try:
            OmegaConf.update(conf, key, value, merge=True, force_add=True)
        except ConfigTypeError:  # a dict over a list or the reverse: the new value replaces the old one
            OmegaConf.update(conf, key, value, merge=False, force_add=True)
        return ""
    except (OmegaConfBaseException, ValueError, TypeError) as e:
        return _list_problem(conf, key, value) or f"{key}: cannot set it to {value!r}: {_first_line(e)}"


def _list_problem(conf: DictConfig, key: str, value: Any) -> str:
    """What is wrong when `key` walks into a list: an index past its end, or a name instead of an index."""
    node: Any = conf
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        node = node.get(part) if isinstance(node, DictConfig) else _entry(node, part)
        if isinstance(node, ListConfig):
            where, nxt = ".".join(parts[:i + 1]), parts[i + 1]
            if not nxt.isdigit():
                return (f"{key}: {where} is a list; address an entry by its index "
                        f"({where}.0.{'.'.join(parts[i + 2:]) or 'KEY'}=...), or give the whole list")
            if int(nxt) >= len(node):
                return (f"{key}: {where} has {len(node)} entries (indexes 0..{len(node) - 1}); an override "
                        "changes an existing entry; to add one, give the whole list in the config")
        if node is None:
            return ""
    return ""


def _entry(node: Any, part: str) -> Any:
    if isinstance(node, ListConfig) and part.isdigit() and int(part) < len(node):
        return node[int(part)]
    return None


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__

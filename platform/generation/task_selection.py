"""Which tasks of a prompt table an inference run loads, and on which base model (`promptray infer`).

As the server loads only the tasks it is asked for, `promptray infer` loads only the tasks its records
name (or those of `tasks=`), so a table may hold tasks trained on other base models; the default base model
is the one those tasks were trained on.
"""

from __future__ import annotations

from promptray.platform.data.dataset import read_records
from promptray.platform.errors import ConfigError, DatasetError
from promptray.platform.table.table import PromptTable


def tasks_of_records(table_uri: str, data_paths: list[str]) -> list[str]:
    """The table's tasks that the records of `data_paths` name, in order of first use: what `promptray infer`
    loads (as the server loads only the tasks it is asked for), so a table may hold tasks of other base
    models. Records naming no task of the table are reported later with their file and line; DatasetError
    when no record names one."""
    known = PromptTable(table_uri).tasks()
    named = dict.fromkeys(r.data.get("taskname") for r in read_records(data_paths) if isinstance(r.data, dict))
    used = [t for t in named if t in known]
    if not used:
        shown = [t for t in named if t is not None]
        raise DatasetError(f"no record of data_paths {data_paths} names a task of the prompt table {table_uri!r} "
                           f"(records name {shown}; the table has {known}); set each record's taskname")
    return used


def trained_base_model(table_uri: str, tasks: list[str]) -> str:
    """The base model `tasks` were trained on (gpt_model_file's default); ConfigError when they name
    different ones, asking for gpt_model_file."""
    by_model: dict[str, list[str]] = {}
    for name, prompt in PromptTable(table_uri).get_many(tasks).items():
        by_model.setdefault(prompt.base_model.name, []).append(name)
    if len(by_model) > 1:
        trained = "; ".join(f"{names} on {model!r}" for model, names in by_model.items())
        raise ConfigError(f"gpt_model_file: not set, and the tasks the records use were trained on different base "
                          f"models ({trained}); set gpt_model_file to one of them and give data_paths of its "
                          "tasks only (or set tasks=[...])")
    return next(iter(by_model))

"""Which tasks of a prompt table an inference run loads, and on which base model (`promptray infer`).

As the server loads only the tasks it is asked for, `promptray infer` loads only the tasks its records
name (or those of `tasks=`), so a table may hold tasks trained on other base models; the default base model
is the one those tasks were trained on (see `load_prompt_model`).
"""

from __future__ import annotations

from typing import Optional

from promptray.platform.data.dataset import Record
from promptray.platform.errors import DatasetError
from promptray.platform.table.table import PromptTable


def tasks_of_records(table_uri: str, records: list[Record], *, endpoint_url: Optional[str] = None) -> list[str]:
    """The table's tasks that `records` name, in order of first use: what `promptray infer` loads (as the
    server loads only the tasks it is asked for), so a table may hold tasks of other base models. The caller
    reads the records once (`read_records`) for this and for `prepare`. Records naming no task of the table
    are reported later with their file and line; DatasetError when no record names one. The base model is
    then the one these tasks were trained on (`load_prompt_model` asks for gpt_model_file when they name
    different ones). `endpoint_url`: for an s3:// table."""
    known = PromptTable(table_uri, endpoint_url=endpoint_url).tasks()
    named = dict.fromkeys(r.data.get("taskname") for r in records if isinstance(r.data, dict))
    used = [t for t in named if t in known]
    if not used:
        shown = [t for t in named if t is not None]
        origins = sorted({r.origin.rsplit(":", 1)[0].split("[")[0] for r in records})
        raise DatasetError(f"no record of {origins} names a task of the prompt table {table_uri!r} "
                           f"(records name {shown}; the table has {known}); set each record's taskname")
    return used


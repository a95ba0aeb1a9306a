"""`promptray table ...`: inspect and manage a prompt table (a local path, file:// or s3:// URI).

    promptray table ls URI [--deleted]             current tasks (version, tokens, style, base model, created)
    promptray table show URI TASK [--version V]    one task: template, encoding, metadata, metrics, embedding stats
    promptray table history URI TASK               every version of a task, oldest first (the current one
                                                   marked *), and the event log
    promptray table rollback URI TASK VERSION      make an earlier version current (a new manifest generation)
    promptray table rm URI TASK                    remove a task from the current set (kept in history)
    promptray table gc URI [--dry-run] [--grace-seconds S]   delete objects no version references
    promptray table export-peft URI TASK OUT_DIR [--version V] [--base-model M] [--force]
    promptray table import-peft ADAPTER_DIR URI TASK [--template T] [--answer-field F] [--base-model M]
Add --json for machine-readable output.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, is_dataclass
from typing import Any

from promptray.jobs.cli_common import seconds


def _print(args: argparse.Namespace, data: Any, rows: list[list[str]] | None = None,
           header: list[str] | None = None) -> None:
    if args.json or rows is None:
        print(json.dumps(asdict(data) if is_dataclass(data) else data, indent=2, default=str))
        return
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


def _table(args: argparse.Namespace):
    from promptray.platform.errors import PromptTableError
    from promptray.platform.table.table import PromptTable

    table = PromptTable(args.uri, endpoint_url=args.endpoint_url)
    if not table.exists():
        raise PromptTableError(f"there is no prompt table at {args.uri!r} (no manifest); train a task with "
                               "model.prompt_table=<uri> (or model.nemo_path=<uri>) to create one")
    return table


def cmd_ls(args: argparse.Namespace) -> int:
    """`promptray table ls URI`: each current task's version, virtual tokens, style and creation time (--deleted:
    the deleted tasks too); 0. PromptTableError when there is no table at URI."""
    table = _table(args)
    infos = table.describe()
    deleted = table.deleted_tasks() if args.deleted else []
    rows = [[i.taskname, i.version, i.num_virtual_tokens, i.style, i.created_at] for i in infos]
    rows += [[name, "(deleted)", "", "", ""] for name in deleted]
    _print(args, {"tasks": [asdict(i) for i in infos], "deleted": deleted}, rows,
           ["TASK", "VERSION", "TOKENS", "STYLE", "CREATED"])
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """`promptray table show URI TASK [--version N]`: one prompt's metadata and embedding statistics (mean, std,
    mean L2 norm per virtual token)."""
    p = _table(args).get(args.task, version=args.version)
    emb = p.embeddings
    _print(args, {"taskname": p.taskname, "version": p.version, "style": p.style, "template": p.template,
                  "num_virtual_tokens": p.num_virtual_tokens, "hidden_size": int(emb.shape[1]),
                  "embedding_stats": {"mean": float(emb.mean()), "std": float(emb.std()),
                                      "norm_per_token": float(emb.norm(dim=1).mean())},
                  "base_model": p.base_model.to_dict(), "encoding": p.encoding.to_dict(), "metrics": p.metrics,
                  "source": p.source,
                  "created_at": p.created_at})
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    """Every version of a task, oldest first, the current one marked (`*` in CURRENT; `current` in --json,
    null for a deleted task), then the task's event log."""
    table = _table(args)
    versions = table.history(args.task)
    events = table.log(args.task)
    current = next((i.version for i in table.describe() if i.taskname == args.task), None)
    data = {"current": current, "versions": [asdict(v) for v in versions], "events": [asdict(e) for e in events]}
    if args.json:
        _print(args, data)
        return 0
    _print(args, data, [["*" if v.version == current else "", v.version, v.num_virtual_tokens, v.style, v.created_at]
                        for v in versions], ["CURRENT", "VERSION", "TOKENS", "STYLE", "CREATED"])
    if current is None:
        print(f"(task {args.task!r} is deleted: no version is current; `promptray table rollback` restores one)")
    if events:
        print()
        _print(args, data, [[e.generation, e.action, e.version, e.at] for e in events],
               ["GENERATION", "ACTION", "VERSION", "AT"])
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    """`promptray table rollback URI TASK VERSION`: make an earlier version current (a new manifest generation)."""
    info = _table(args).rollback(args.task, args.version)
    print(f"{info.taskname}: current version is now {info.version}")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    """`promptray table rm URI TASK`: remove the task from the current tasks; its versions stay in history."""
    info = _table(args).delete(args.task)
    print(f"{info.taskname}: removed from the current tasks (last version {info.version} stays in history; "
          f"`promptray table rollback {args.uri} {info.taskname} {info.version}` restores it)")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    """`promptray table gc URI [--dry-run] [--grace-seconds S]`: delete (or list) objects no version references."""
    removed = _table(args).gc(dry_run=args.dry_run, grace_seconds=args.grace_seconds)
    if args.json:
        _print(args, {"dry_run": args.dry_run, "removed": removed})
    else:
        verb = "would remove" if args.dry_run else "removed"
        print(f"{verb} {len(removed)} unreferenced object(s)" + "".join(f"\n  {k}" for k in removed))
    return 0


def cmd_export_peft(args: argparse.Namespace) -> int:
    """`promptray table export-peft`: write a task's prompt as a PEFT prompt-tuning adapter folder."""
    from promptray.platform.table.peft_export import export_peft_adapter
    from promptray.platform.table.table import PromptTable

    table = PromptTable(args.uri, endpoint_url=args.endpoint_url)
    out = export_peft_adapter(table, args.task, args.out_dir, args.base_model, args.version, force=args.force)
    print(f"wrote a PEFT prompt-tuning adapter to {out}")
    return 0


def cmd_import_peft(args: argparse.Namespace) -> int:
    """`promptray table import-peft`: publish a PEFT prompt-tuning adapter as a new version of a task."""
    from promptray.platform.table.peft_import import import_peft_adapter
    from promptray.platform.table.table import PromptTable

    table = PromptTable(args.uri, endpoint_url=args.endpoint_url)
    version = import_peft_adapter(args.adapter_dir, table, args.task, prompt_template=args.template,
                                  base_model=args.base_model, answer_field=args.answer_field)
    print(f"imported {args.adapter_dir} as task {args.task!r} version {version}")
    return 0


def register(sub) -> None:
    """Add `table` and its subcommands to the main parser's subparsers."""
    t = sub.add_parser("table", help="inspect and manage a prompt table (path, file:// or s3:// URI)")
    ts = t.add_subparsers(dest="table_command", required=True)

    def add(name: str, fn, help_: str, *positional: str):
        p = ts.add_parser(name, help=help_)
        for arg in positional:
            p.add_argument(arg)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument("--endpoint-url", help="S3-compatible endpoint for s3:// URIs (default: AWS_ENDPOINT_URL)")
        p.set_defaults(fn=fn)
        return p

    add("ls", cmd_ls, "list current tasks", "uri").add_argument("--deleted", action="store_true")
    add("show", cmd_show, "show one task", "uri", "task").add_argument("--version")
    add("history", cmd_history, "versions and events of a task", "uri", "task")
    add("rollback", cmd_rollback, "make an earlier version current", "uri", "task", "version")
    add("rm", cmd_rm, "remove a task (kept in history)", "uri", "task")
    gc = add("gc", cmd_gc, "delete unreferenced objects", "uri")
    gc.add_argument("--dry-run", action="store_true")
    gc.add_argument("--grace-seconds", type=seconds, default=3600.0,
                    help="only objects older than this are collected (in-flight publishes are safe)")
    ex = add("export-peft", cmd_export_peft, "export a task as a PEFT adapter", "uri", "task", "out_dir")
    ex.add_argument("--version")
    ex.add_argument("--base-model")
    ex.add_argument("--force", action="store_true", help="export templates PEFT cannot express exactly")
    im = add("import-peft", cmd_import_peft, "import a PEFT prompt-tuning adapter", "adapter_dir", "uri", "task")
    im.add_argument("--template", help="one <|VIRTUAL_PROMPT_0|> at the start, e.g. '<|VIRTUAL_PROMPT_0|>{input}'")
    im.add_argument("--answer-field")
    im.add_argument("--base-model")

"""The `promptray` command: train, infer, demo.

    promptray train CONFIG.yaml [model.new_tasks=[squad] trainer.max_steps=100 ...]
    promptray infer virtual_prompt_model_file=TABLE data_paths=[a.jsonl,b.jsonl] [gpt_model_file=MODEL]
                    [inference.greedy=True inference.tokens_to_generate=20 ...] [output_file=preds.jsonl]
    promptray demo [--quick] [--in-process] [--steps 150] [--out runs/demo] [--no-progress]
    promptray data demo OUT_DIR
    promptray table ls|show|history|rollback|rm|gc|export-peft|import-peft ...   (see jobs/table_cli.py)
    promptray serve --table URI [--model NAME] [--port 8000] [--replicas 1] [--address auto --detach]
                    (HTTP API, see serve/app.py)

Errors from user input print one clear message (exit 2), never a traceback; warnings print as one log line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import time
import warnings
from typing import Optional

from promptray.jobs import table_cli
from promptray.jobs.cli_common import MissingDependencyError, missing_extra, parse_anywhere  # noqa: F401
from promptray.jobs.serving import APP_NAME, ServerStartError, deploy, import_serving  # noqa: F401
from promptray.platform.errors import ConfigError, PromptrayError


def cmd_train(args: argparse.Namespace) -> int:
    """`promptray train CONFIG [overrides]`: train in this process and print the result as JSON; 0 on success."""
    from promptray.jobs.config import load_job_config
    from promptray.platform.train.trainer import train

    cfg = load_job_config(args.config, args.overrides, check_files=True)
    if args.no_progress:
        quiet_progress_bars()
    result = train(cfg, progress=not args.no_progress)
    print(json.dumps({"table": result.table_uri, "versions": result.versions, "steps": result.steps,
                      "best_val_loss": result.best_val_loss, "tokens_per_s": round(result.tokens_per_s, 1),
                      "metrics": str(result.metrics_path), "learning_curve": str(result.plot_path)}, indent=2))
    return 0


def cmd_infer(args: argparse.Namespace) -> int:
    """`promptray infer [--config FILE] [overrides]`: predict the records, write the outputs, print a JSON summary."""
    from promptray.platform.generation.infer_config import load_infer_config, run_inference

    cfg = load_infer_config(args.config, args.overrides)
    if args.no_progress:
        quiet_progress_bars()
    summary = run_inference(cfg, progress=not args.no_progress)
    print(json.dumps(summary, indent=2))
    return 0


def demo_plan(args: argparse.Namespace):
    """The demo's plan: --quick's or the full one, with the flags given explicitly on top."""
    from dataclasses import replace

    from promptray.jobs.demo import QUICK, DemoPlan

    flags = {"steps": args.steps, "question_steps": args.question_steps, "n_test": args.n_test,
             "model": args.model, "num_cpus": args.num_cpus}
    problems = [f"--{k.replace('_', '-')} {v}: give a number >= 1" for k, v in flags.items()
                if isinstance(v, int) and v < 1]
    if problems:
        raise ConfigError(problems, title="invalid demo flags")
    return replace(QUICK if args.quick else DemoPlan(), **{k: v for k, v in flags.items() if v is not None})


def cmd_demo(args: argparse.Namespace) -> int:
    plan = demo_plan(args)
    if args.no_progress:
        quiet_progress_bars()
    if args.in_process:
        from promptray.platform.demo import run_demo

        run_demo(args.out, steps=plan.steps, question_steps=plan.question_steps, n_test=plan.n_test,
                 model=plan.model, progress=not args.no_progress, val_batches=plan.val_batches)
        return 0
    from promptray.jobs.cli_common import require_ray
    from promptray.jobs.demo import run_platform_demo

    require_ray("the demo runs Ray jobs and Ray Serve")
    if not args.verbose:  # Ray's job client logs each upload at INFO ("Uploading package ...")
        import ray.job_submission  # noqa: F401  (its module sets its logger's level when imported: first)

        for name in ("ray", "ray.dashboard.modules.dashboard_sdk"):
            logging.getLogger(name).setLevel(logging.WARNING)
    run_platform_demo(args.out, plan, progress=not args.no_progress)
    return 0


def quiet_progress_bars() -> None:
    """--no-progress: Hugging Face's own bars (weights loading) off too, for this process."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    disable_progress_bars()
    hf_logging.disable_progress_bar()


def cmd_data(args: argparse.Namespace) -> int:
    """`promptray data demo OUT_DIR`: write the demo's sentiment and question splits; print their paths."""
    from promptray.platform.data.demo_data import movie_sentiment, trec_questions, write_splits

    files = [*write_splits("sentiment", movie_sentiment(), args.out, n_val=200, n_test=400).values(),
             *write_splits("questions", trec_questions(), args.out, n_val=200, n_test=400).values()]
    print("\n".join(sorted(str(f) for f in files)))
    return 0


def _import_serving():
    """ray, ray.serve and the app, or MissingDependencyError saying what to install (the `ray` extra)."""
    return import_serving()


# `promptray serve` flags that are ServerSettings fields: field -> flag
SERVE_FLAGS = {"table": "--table", "model": "--model", "precision": "--precision", "accelerator": "--accelerator",
               "max_batch_size": "--max-batch-size", "refresh_s": "--refresh-s", "api_keys_file": "--api-keys-file",
               "batching": "--batching", "threads": "--threads", "max_queue": "--max-queue",
               "kv_budget_tokens": "--kv-budget-tokens", "max_prompt_tokens": "--max-prompt-tokens"}


def serve_settings(args: argparse.Namespace):
    """ServerSettings from the `serve` flags, with --replicas, --port and --host checked too: ConfigError
    listing every bad flag (its value and the allowed range) at once, before anything starts."""
    from pydantic import ValidationError

    from promptray.serve.schemas import ServerSettings

    problems = []
    if args.replicas < 1:
        problems.append(f"--replicas {args.replicas}: give at least 1 replica")
    if args.max_replicas is not None and args.max_replicas < max(args.replicas, 1):
        problems.append(f"--max-replicas {args.max_replicas}: give at least --replicas ({args.replicas})")
    if not 1 <= args.port <= 65535:
        problems.append(f"--port {args.port}: give a TCP port from 1 to 65535")
    if not args.host.strip():
        problems.append("--host '': give an address to listen on, e.g. 127.0.0.1 or 0.0.0.0")
    if args.detach and not args.address:
        problems.append("--detach without --address: the embedded local Ray ends with this command; give the "
                        "cluster to deploy on (--address auto inside a Ray job or on a cluster node)")
    if not args.model and "://" not in args.table and not os.path.isdir(args.table):
        problems.append(f"--table {args.table!r}: no prompt table there (no such folder); give the folder a job "
                        "published to, an s3:// table, or --model to serve a table that jobs will publish to later")
    try:
        settings = ServerSettings(**{field: getattr(args, field) for field in SERVE_FLAGS})
    except ValidationError as e:
        settings = None
        for err in e.errors(include_url=False):
            msg = err["msg"].removeprefix("Value error, ")
            if not err["loc"]:  # a rule between settings: its message names them, as flags here
                for field, flag in SERVE_FLAGS.items():
                    msg = re.sub(rf"\b{field}\b", flag, msg)
                problems.append(msg)
                continue
            flag = SERVE_FLAGS.get(str(err["loc"][0]), str(err["loc"][0]))
            problems.append(f"{flag} {err.get('input')!r}: {msg[0].lower() + msg[1:]}")
    if problems:
        raise ConfigError(problems, title="invalid serve flags")
    return settings


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve every task of a table over HTTP: serve.run on an embedded local Ray (or the cluster at --address),
    until Ctrl-C; with --detach, deploy and return (the app keeps serving on the cluster). A replica that
    cannot serve (e.g. no task fits the base model) stops it with exit 2 and the reason."""
    settings = serve_settings(args)  # every flag checked before Ray starts
    serving = _import_serving()
    ray, serve, _ = serving
    if args.address:
        ray.init(address=args.address, configure_logging=False)
    else:
        ray.init(address="local", include_dashboard=False, configure_logging=False)
    deployed = False
    try:
        if settings.threads is None and not args.address:  # the machine's cores, shared among the replicas
            settings = settings.model_copy(update={"threads": max(1, (os.cpu_count() or 1)
                                                                  // (args.max_replicas or args.replicas))})
        deploy(settings, host=args.host, port=args.port, replicas=args.replicas, max_replicas=args.max_replicas,
               serving=serving)
        url = f"http://{args.host}:{args.port}"
        if args.detach:
            deployed = True
            print(f"promptray serving {args.table} at {url} (API docs at /docs) on the Ray cluster at "
                  f"{args.address}; it serves until `serve shutdown` or the cluster stops", flush=True)
            return 0
        print(f"promptray serving {args.table} at {url} (API docs at /docs); Ctrl-C stops", flush=True)
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM too stops it cleanly
        while True:
            time.sleep(3600)  # Ctrl-C raises KeyboardInterrupt here
    finally:
        if args.detach and not deployed:
            serve.delete(APP_NAME)  # a failed detached deployment leaves nothing on the cluster
        elif not args.detach:
            serve.shutdown()
        ray.shutdown()


def _add_serve(sub) -> None:
    s = sub.add_parser("serve", help="serve every task of a prompt table over HTTP (Ray Serve, one base model)")
    s.add_argument("--table", required=True, help="prompt table URI: a local path or s3://bucket/prefix")
    s.add_argument("--model", help="base model (default: the one the table's prompts were trained on)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    s.add_argument("--port", type=int, default=8000, help="HTTP port")
    s.add_argument("--replicas", type=int, default=1, help="replicas, each with its own base model and scheduler")
    s.add_argument("--address", help="deploy on this Ray cluster (its GCS address, or auto inside a Ray job) "
                   "instead of an embedded local Ray")
    s.add_argument("--detach", action="store_true", help="with --address: deploy, print the URL and return; the "
                   "app keeps serving on the cluster")
    s.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="base model dtype (auto: bf16, as prompts are trained)")
    s.add_argument("--accelerator", choices=["auto", "cpu", "gpu"], default="auto",
                   help="auto/gpu: one GPU per replica when the machine has GPUs; cpu: never")
    s.add_argument("--max-replicas", type=int, default=None,
                   help="autoscale between --replicas and this many on queue length (default: fixed --replicas)")
    s.add_argument("--batching", choices=["continuous", "static"], default="continuous",
                   help="continuous: requests join and leave the running batch between steps; static: classic")
    s.add_argument("--threads", type=int, default=None,
                   help="torch threads (and CPUs reserved) per replica (default: the cores / replicas; "
                   "with --address: 1)")
    s.add_argument("--max-batch-size", type=int, default=16, help="rows decoded together at most")
    s.add_argument("--max-queue", type=int, default=64, help="requests waiting at most; beyond, 503 + Retry-After")
    s.add_argument("--kv-budget-tokens", type=int, default=65536,
                   help="KV-cache slots of a replica's running rows (at least --max-prompt-tokens)")
    s.add_argument("--max-prompt-tokens", type=int, default=4096,
                   help="longest prompt in tokens, virtual ones included (longer: cut at the template's "
                   "truncate_field, else a 422)")
    s.add_argument("--refresh-s", type=float, default=10.0, help="re-read the table's manifest this often")
    s.add_argument("--api-keys-file", help="bearer keys, one a line (also: env PROMPTRAY_API_KEYS=k1,k2)")
    s.set_defaults(fn=cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    """The `promptray` argument parser: train, infer, demo, data, table and serve subcommands."""
    p = argparse.ArgumentParser(prog="promptray", description="Tune and serve soft prompts on a frozen LM.")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="prompt-tune / p-tune from a NeMo-style YAML config")
    t.add_argument("config", help="YAML config (NeMo's prompt-learning format)")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.new_tasks=[squad] (before or "
                   "after the flags)")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(fn=cmd_train)
    i = sub.add_parser("infer", help="multi-task inference from a prompt table (mirrors NeMo's eval script)")
    i.add_argument("overrides", nargs="*", help="KEY=VALUE settings, e.g. virtual_prompt_model_file=TABLE")
    i.add_argument("--config", help="optional YAML with the same keys")
    i.add_argument("--no-progress", action="store_true")
    i.set_defaults(fn=cmd_infer)
    d = sub.add_parser("demo", help="the platform's journey: two Ray Train jobs into one prompt table, Ray Serve "
                       "over HTTP, zero-shot vs tuned accuracy (--in-process: the engine alone)")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--quick", action="store_true", help="a short run (12 steps per job, 32 + 16 held-out examples)")
    d.add_argument("--in-process", action="store_true", help="the engine alone in this process: no Ray, no server")
    d.add_argument("--steps", type=int, help="sentiment training steps (default 150; --quick 12)")
    d.add_argument("--question-steps", type=int, help="question-type training steps (default 100; --quick 12)")
    d.add_argument("--n-test", type=int, help="held-out sentiment examples scored, question type half as many "
                   "(default 400; --quick 32)")
    d.add_argument("--model", help="base model (default smollm2-135m)")
    d.add_argument("--num-cpus", type=int, help="CPUs of the embedded Ray cluster (default: all)")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(fn=cmd_demo)
    dd = sub.add_parser("data", help="write bundled example data sets as .jsonl")
    dd.add_argument("name", choices=["demo"], help="demo: the demo's sentiment and question splits")
    dd.add_argument("out", help="output folder")
    dd.set_defaults(fn=cmd_data)
    table_cli.register(sub)
    _add_serve(sub)
    return p


def _log_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A Python warning raised under the CLI, as one log line (no source file or line of code)."""
    logging.getLogger("promptray").warning("%s", message)


def main(argv: Optional[list[str]] = None) -> int:
    """Run the `promptray` command line; exit status 0, 2 for an error from user input (one message, no
    traceback), 130 when interrupted."""
    if hasattr(signal, "SIGPIPE") and argv is None:
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `promptray table ls | head` ends quietly
    args = parse_anywhere(build_parser(), argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        with warnings.catch_warnings():  # restores showwarning on the way out
            warnings.showwarning = _log_warning
            return args.fn(args)
    except PromptrayError as e:
        print(f"promptray {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""`promptray demo`: the platform's journey on embedded defaults, one progress line per stage.

    [1/6] start the SDK's embedded Ray cluster (`Client()` without an address: `ray start --head` on loopback)
    [2/6] Ray Train job, submitted with `Client.submit_tuning`: prompt tuning of 'sentiment' (a progress bar
          follows the job's metrics)
    [3/6] a second job: p-tuning of 'question_type' restoring the table (continual learning); 'sentiment' is
          read back and checked bit-identical
    [4/6] Ray Serve on the table (a Ray job runs `promptray serve --address auto --detach`: serve/app.py's app
          on the cluster) and mixed-task requests over HTTP: /v1/generate, /v1/completions and a streamed
          /v1/generate, sent at once
    [5/6] held-out accuracy per task: tuned through the served endpoint, zero-shot (the template without
          virtual tokens, which the server cannot serve) with the same decode core in this process
    [6/6] stop everything it started, by PID: the cluster and all on it (jobs, Serve), also on Ctrl-C, SIGTERM
          or an error

Writes out/demo_result.json and out/demo.png (learning curves with the published step, zero-shot vs tuned
accuracy); the jobs write out/sentiment/ and out/question_type/, the table is out/prompt_table/.
`promptray demo --in-process` runs the engine alone instead (platform/demo.py).
"""

from __future__ import annotations

import contextlib
import json
import shlex
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from promptray.jobs.demo_http import mixed_requests, served_accuracy, served_tasks
from promptray.platform.demo import (
    MAX_ANSWER_TOKENS,
    MIXED_RECORDS,
    TASK_FIELDS,
    accuracy,
    demo_data,
    held_out,
    questions_config,
    sentiment_config,
    write_figure,
)
from promptray.platform.ports import free_ports

STAGES = 6
HOST = "127.0.0.1"


@dataclass(frozen=True)
class DemoPlan:
    """How much the demo does: optimizer steps of each job (8 examples a step), held-out examples scored for
    sentiment (question type: half as many), validation batches per validation, the base model, and the
    CPUs of the embedded cluster (None: all of this machine's)."""

    steps: int = 150
    question_steps: int = 100
    n_test: int = 400
    val_batches: int = 25
    model: str = "smollm2-135m"
    num_cpus: Optional[int] = None

    @property
    def n_test_questions(self) -> int:
        return max(1, self.n_test // 2)


QUICK = DemoPlan(steps=12, question_steps=12, n_test=32, val_batches=4)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt, as Ctrl-C does, while the demo runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """Ctrl-C and SIGTERM ignored, so that the cleanup runs to its end (main thread only)."""
    main = threading.current_thread() is threading.main_thread()
    saved = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def _shown(path) -> str:
    """`path` relative to the working directory when it is below it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


class PlatformDemo:
    """One run of the journey (see the module docstring); `run()` returns what demo_result.json holds."""

    def __init__(self, out_dir: str | Path, plan: DemoPlan, progress: bool = True):
        self.out, self.plan, self.progress = Path(out_dir).resolve(), plan, progress
        self.table = str(self.out / "prompt_table")
        self.client = None  # promptray.sdk.Client, once stage 1 starts
        self.result: dict = {"mode": "platform", "model": plan.model, "plan": asdict(plan), "seconds": {}}

    def say(self, text: str, stage: Optional[int] = None) -> None:
        print(f"[{stage}/{STAGES}] {text}" if stage else f"      {text}", flush=True)

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        t0 = time.monotonic()
        yield
        self.result["seconds"][name] = round(time.monotonic() - t0, 1)

    # ------------------------------------------------------------------ the journey
    def run(self) -> dict:
        t0 = time.monotonic()
        with sigterm_as_interrupt():
            try:
                data = demo_data(self.out)
                with self.timed("cluster"):
                    self.start_cluster()
                curves = self.tune(data)
                with self.timed("serve"):
                    base = self.serve()
                with self.timed("accuracy"):
                    self.score(base, data)
            finally:
                self.stop()
        self.result["seconds"]["total"] = round(time.monotonic() - t0, 1)
        self.write(curves)
        return self.result

    def start_cluster(self) -> None:
        from promptray.sdk import Client

        self.say("starting the SDK's embedded Ray cluster (Client() without an address: `ray start --head` on "
                 f"{HOST}, its own ports, token and temp dir)", 1)
        self.client = Client(num_cpus=self.plan.num_cpus)
        self.client.connect()
        c = self.client.cluster
        self.say(f"{c.num_cpus} CPUs, dashboard {c.dashboard_url}, process group {c.pgid}, logs in {c.temp_dir}")
        self.result["cluster"] = {"dashboard": c.dashboard_url, "num_cpus": c.num_cpus, "pgid": c.pgid,
                                  "temp_dir": str(c.temp_dir)}

    def tune(self, data: dict) -> dict:
        """Stages 2 and 3: the two jobs; returns each task's (metrics records, published step)."""
        p = self.plan
        first = sentiment_config(self.out, data["sentiment"], p.steps, p.model, p.val_batches)
        second = questions_config(self.out, data["question_type"], p.question_steps, p.model, p.val_batches)
        curves = {"sentiment": self.job(2, "sentiment", first, f"Ray Train job: prompt tuning 'sentiment' on "
                                        f"{p.model} ({p.steps} steps of 8 movie reviews)")}
        before = prompt_bits(self.table, "sentiment")
        curves["question_type"] = self.job(3, "question_type", second, "Ray Train job: p-tuning 'question_type' "
                                           f"(TREC, {p.question_steps} steps), restoring the table; 'sentiment' "
                                           "stays frozen")
        after = prompt_bits(self.table, "sentiment")
        same = before == after
        self.result["continual_learning"] = {"task": "sentiment", "version_before": before[0],
                                             "version_after": after[0], "bit_identical": same}
        self.say(f"'sentiment' after the second job: version {after[0]}, its embeddings "
                 f"{'bit-identical (checked byte for byte)' if same else 'CHANGED'}")
        return curves

    def job(self, stage: int, task: str, raw: dict, what: str) -> tuple[list[dict], Optional[int]]:
        """Submit one tuning job (one worker holding all the cluster's CPUs), follow it, record its result."""
        self.say(what, stage)
        t0 = time.monotonic()
        cpus = self.client.cluster.num_cpus
        job = self.client.submit_tuning(config={**raw, "ray": {"num_workers": 1, "resources_per_worker": {"CPU": cpus},
                                                               "num_to_keep": 1}})
        self.say(f"job {job.id} submitted with Client.submit_tuning to {self.client.address}")
        job.wait(show_progress=self.progress)
        res = job.result()
        seconds = round(time.monotonic() - t0, 1)
        self.result.setdefault("jobs", {})[task] = {
            "job_id": job.id, "style": raw["model"]["virtual_prompt_style"], "steps": res.steps,
            "best_step": res.best_step, "best_val_loss": res.best_val_loss, "version": res.versions[task],
            "run_dir": res.run_dir, "learning_curve": str(Path(res.run_dir) / "learning_curve.png"),
            "seconds": seconds}
        self.result["seconds"][f"job_{task}"] = seconds
        loss = "n/a" if res.best_val_loss is None else f"{res.best_val_loss:.3f}"
        self.say(f"published {task} {res.versions[task]} to {_shown(self.table)}: best validation loss {loss} "
                 f"at step {res.best_step} of {res.steps} ({seconds:.0f} s)")
        return [m.model_dump() for m in job.metrics()], res.best_step

    def serve(self) -> str:
        """Stage 4: deploy Serve on the table with a Ray job running `promptray serve --address auto --detach`
        (the app outlives the job), then send mixed-task requests."""
        cpus, port = self.client.cluster.num_cpus, free_ports(1)[0]
        self.say(f"Ray Serve on the prompt table: one replica ({cpus} CPUs), one base model, every task; "
                 "mixed-task requests over HTTP", 4)
        command = (f"{self.client.settings.python} -m promptray.jobs.cli serve --table {shlex.quote(self.table)} "
                   f"--address auto --detach --host {HOST} --port {port} --threads {cpus} --precision bf16 "
                   "--accelerator cpu")
        jobs = self.client.connect()  # PROMPTRAY_API_KEYS empty: the demo's server is open, on loopback only
        job_id = jobs.submit(command, {"env_vars": {"PROMPTRAY_API_KEYS": ""}}, {"promptray": "serve"})
        self.say(f"job {job_id}: promptray serve --table {_shown(self.table)} --address auto --detach --port {port}")
        self.client.get_job(job_id).wait(show_progress=False)
        base = f"http://{HOST}:{port}"
        served = served_tasks(base)
        self.say(f"serving at {base} (API docs at {base}/docs): "
                 + ", ".join(f"{t} {v}" for t, v in sorted(served.items())))
        rows = mixed_requests(base, MIXED_RECORDS, TASK_FIELDS)
        for r in rows:
            extra = f", first chunk after {r['first_chunk_ms']} ms" if "first_chunk_ms" in r else ""
            self.say(f"{r['route']:22s} {r['task']:13s} {r['version']}  {r['input']!r} -> {r['answer']!r}  "
                     f"({r['latency_ms']} ms{extra})")
        self.result["serving"] = {"url": base, "job_id": job_id, "tasks": served, "requests": rows}
        return base

    def score(self, base: str, data: dict) -> None:
        """Stage 5: held-out accuracy per task, tuned through the endpoint, zero-shot in this process."""
        from promptray.platform.generation.decode import GenerationParams
        from promptray.platform.generation.inference import load_inference_engine
        from promptray.platform.model.devices import resolve_device

        self.say("held-out accuracy (greedy, exact label match): tuned through the served endpoint, zero-shot "
                 "(no virtual tokens) with the same decode core here", 5)
        engine = load_inference_engine(self.table, precision="bf16", device=resolve_device("cpu"))
        params = GenerationParams(max_new_tokens=MAX_ANSWER_TOKENS, greedy=True)
        scores = {}
        for task, n in (("sentiment", self.plan.n_test), ("question_type", self.plan.n_test_questions)):
            test = data[task]["test"]
            records = [json.loads(line) for line in test.read_text(encoding="utf-8").splitlines()[:n]]
            scores[task] = served_accuracy(base, task, TASK_FIELDS[task], records, progress=self.progress)
            scores[task]["zero_shot"] = accuracy(engine, held_out(engine, test, n, zero_shot=True), params,
                                                 progress=self.progress, desc=f"{task} zero-shot")
            s = scores[task]
            self.say(f"{task:14s} zero-shot {s['zero_shot']:6.1%}  ->  tuned {s['tuned']:6.1%}  "
                     f"({s['n_test']} held-out examples; served version {', '.join(s['versions'])})")
        self.result["accuracy"] = scores

    # ------------------------------------------------------------------ the end
    def stop(self) -> None:
        """Stage 6 (always): stop the cluster and everything on it (jobs, Serve) by PID."""
        with signals_ignored():
            cluster = self.client.cluster if self.client is not None else None
            if cluster is None:
                return
            pids = cluster.pids()
            self.client.close()
            left = alive(pids)
            self.result["cluster"].update({"stopped_pids": pids, "left_running": left})
            self.say(f"stopped the embedded Ray cluster and all on it (jobs, Serve): {len(pids)} processes, by "
                     f"PID; {'none' if not left else left} left running", STAGES)

    def write(self, curves: dict) -> None:
        figure = write_figure(self.out / "demo.png", curves, self.result["accuracy"])
        self.result.update({"table": self.table, "figure": str(figure)})
        path = self.out / "demo_result.json"
        path.write_text(json.dumps(self.result, indent=2))
        jobs = self.result["jobs"]
        print(f"prompt table {_shown(self.table)}; learning curves "
              f"{', '.join(_shown(j['learning_curve']) for j in jobs.values())}")
        print(f"figure {_shown(figure)}; summary {_shown(path)}; done in {self.result['seconds']['total']:.0f} s")


def prompt_bits(table: str, task: str) -> tuple[str, bytes]:
    """(current version, the raw bytes of its float32 embeddings) of a task of the table."""
    from promptray.platform.table.table import PromptTable

    prompt = PromptTable(table).get(task)
    return prompt.version, prompt.embeddings.contiguous().numpy().tobytes()


def alive(pids: list[int]) -> list[int]:
    """Those of `pids` that still run (zombies, already dead, are not counted)."""
    import psutil

    running = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                running.append(pid)
        except psutil.NoSuchProcess:
            continue
    return running


def run_platform_demo(out_dir: str | Path = "runs/demo", plan: DemoPlan = DemoPlan(), progress: bool = True) -> dict:
    """`promptray demo`: the journey of the module docstring; returns what out_dir/demo_result.json holds."""
    return PlatformDemo(out_dir, plan, progress).run()

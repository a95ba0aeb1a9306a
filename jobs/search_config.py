"""The `search:` section of a config: what `python -m promptray.jobs.search` tries with Ray Tune.

Plain values only (no Ray, no torch): per task the virtual-token counts (a list or a {min, max, step} range),
the shares of tokens per marker for multi-marker templates, the learning rate (log-uniform) and the init
methods; the styles; the objective; ASHA and budget settings. `search_problems` reports every problem of the
space together with the rest of the config before any trial starts. Part of the job config (config.JobConfig).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Optional, Union

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from promptray.platform.config.loader import describe_error
from promptray.platform.config.types import MAX_COUNT, MAX_LR, MAX_STEPS, Float, Int
from promptray.platform.data.templates import Virtual, parse_template

if TYPE_CHECKING:
    from promptray.jobs.config import JobConfig

Style = Literal["prompt-tuning", "p-tuning"]


NO_SEARCH = "search: missing section; give search.tasks with total_virtual_tokens per new task"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


RANGE_FORMS = "a list of counts, e.g. [8, 16, 32], or a range {min: 8, max: 32, step: 8} (max included)"


class IntRange(_Section):
    """A {min, max, step} range of counts; `int_range` checks a dict for it, every problem at once."""

    min: Int = Field(ge=1, le=MAX_COUNT)
    max: Int = Field(ge=1, le=MAX_COUNT)
    step: Int = Field(1, ge=1, le=MAX_COUNT)


def int_range(value: dict) -> IntRange:
    """`value` as an IntRange, or one ValueError naming every problem (bad fields and min > max together).
    `{min:10,max:5}` (no space after the colons, so YAML reads keys 'min:10') is read as {min: 10, max: 5}."""
    value = dict(_colon_key(k, v) for k, v in value.items())
    problems = []
    try:
        rng = IntRange.model_validate(value)
    except ValidationError as e:
        problems = [describe_error(err if err.get("loc") else {**err, "loc": ("range",)}) for err in e.errors()]
        rng = None
    low, high = value.get("min"), value.get("max")
    if isinstance(low, int) and isinstance(high, int) and high < low:
        problems.append(f"max {high} is below min {low}; give min <= max")
    if problems:
        raise ValueError(f"{'; '.join(problems)}. Give {RANGE_FORMS}")
    return rng


def _colon_key(key, value) -> tuple:
    if isinstance(key, str) and value is None and ":" in key:
        name, _, text = key.partition(":")
        try:
            return name.strip(), int(text)
        except ValueError:
            return key, value
    return key, value


class LogRange(_Section):
    """A learning-rate range {min, max}, sampled log-uniformly; 0 < min < max <= MAX_LR."""

    min: Float = Field(gt=0, le=MAX_LR)
    max: Float = Field(gt=0, le=MAX_LR)

    @model_validator(mode="after")
    def _ordered(self) -> LogRange:
        if self.max <= self.min:
            raise ValueError(f"max {self.max} is not above min {self.min}; give min < max (for a fixed learning "
                             "rate drop the range and set model.optim.lr)")
        return self


class TaskSpace(_Section):
    """One task's dimensions. `splits`: candidate shares per marker (e.g. [[1, 1], [1, 3]]); each candidate
    becomes integer splits >= 1 that sum to the trial's total. Default: equal shares."""

    total_virtual_tokens: Optional[Union[list[Int], IntRange]] = None  # required (search_problems says so)
    splits: Optional[list[list[Float]]] = None
    lr: Optional[LogRange] = None  # independent (prompt-tuning) searches only; joint ones use search.lr
    init: Optional[list[Literal["text", "random", "vocab"]]] = None
    init_text: Optional[str] = None  # for init 'text' (default: model.prompt_tuning.new_prompt_init_text)
    labels: Optional[list[str]] = None  # val_accuracy: the closed label set (default: the data's, see max_labels)

    @field_validator("total_virtual_tokens", mode="before")
    @classmethod
    def _counts(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return int_range(v)
        if v is not None and not isinstance(v, (list, IntRange)):
            raise ValueError(f"give {RANGE_FORMS}")
        return v

    @property
    def counts(self) -> list[int]:
        """The candidate total_virtual_tokens counts (a range expanded, max included; [] when not given)."""
        t = self.total_virtual_tokens
        if t is None:
            return []
        return list(t) if isinstance(t, list) else list(range(t.min, t.max + 1, t.step))


class SearchConfig(_Section):
    """The `search:` section: per-task spaces (`tasks`), candidate styles and learning-rate range, the
    objective (val_loss, minimized, or val_accuracy, maximized), trials and their resources, the time budget
    (seconds), and ASHA's grace period (validations) and reduction factor."""

    tasks: dict[str, TaskSpace]
    style: Optional[list[Style]] = None  # default: model.virtual_prompt_style
    lr: Optional[LogRange] = None  # default: model.optim.lr (fixed)
    metric: Literal["val_loss", "val_accuracy"] = "val_loss"
    num_samples: Int = Field(1, ge=1, le=MAX_COUNT)  # samples of the other dimensions per token-count grid point
    max_concurrent_trials: Int = Field(1, ge=1, le=MAX_COUNT)
    # 1-worker trials (else ray.resources_per_worker); None: a share of the cluster's CPUs (search_trial.trial_cpus)
    cpus_per_trial: Optional[Float] = Field(None, gt=0, le=MAX_COUNT)
    time_budget_s: Optional[Float] = Field(None, gt=0.0)
    seed: Int = Field(0, ge=0, le=2**32 - 1)
    grace_period: Int = Field(1, ge=1, le=MAX_STEPS)  # validations before ASHA may stop a trial
    reduction_factor: Float = Field(2.0, gt=1, le=MAX_COUNT)
    # val_accuracy: greedy answer length (Hugging Face's name; the old key tokens_to_generate is still read)
    max_new_tokens: Int = Field(8, ge=1, le=MAX_COUNT,
                                validation_alias=AliasChoices("max_new_tokens", "tokens_to_generate"))
    # val_accuracy: label ranking when a task's answers form a closed set (tasks.<t>.labels, else at most
    # max_labels distinct answers in its data), greedy exact match otherwise; on val_samples records (None: all)
    val_samples: Optional[Int] = Field(None, ge=1, le=MAX_COUNT)
    # val_accuracy: validation records per forward pass (label ranking: each with all its labels; exact match:
    # per generation batch); independent of model.micro_batch_size, which sets the training batch
    val_batch_size: Int = Field(16, ge=1, le=MAX_COUNT)
    max_labels: Int = Field(20, ge=2, le=MAX_COUNT)
    label_ranking: bool = True  # false: greedy exact match even for a closed label set (the answer's format counts)
    # budget mode (search_plan.py): total optimizer steps over all candidates, packed successive halving
    budget_steps: Optional[Int] = Field(None, ge=1, le=MAX_STEPS)
    brackets: Int = Field(1, ge=1, le=MAX_COUNT)  # packed trials (Hyperband brackets), one Tune trial each
    grace_fraction: Float = Field(0.25, gt=0.0, le=1.0)  # first rung >= this share of the full length
    train_best: bool = False  # the bracket's best trains on alone in a last rung (the end of the budget)
    # a pack's candidates share each micro-step's forward pass (platform/train/pack.py): for accelerators; in bf16
    # the merged batch rounds differently from each candidate's own (off: one forward per candidate)
    shared_forward: bool = False
    # candidates a pack trains and validates at once on threads, each on its share of the trial's CPUs (None: 2
    # on a CPU trial with 2+ CPUs, else 1); the same values as one at a time, within float rounding
    parallel_candidates: Optional[Int] = Field(None, ge=1, le=MAX_COUNT)

    @property
    def metric_mode(self) -> str:
        """'min' for val_loss, 'max' for val_accuracy (Ray Tune's mode)."""
        return "min" if self.metric == "val_loss" else "max"

    def styles(self, default: str) -> list[str]:
        """The candidate styles: search.style, else [default] (model.virtual_prompt_style)."""
        return list(self.style) if self.style else [default]

    def joint(self, default_style: str) -> bool:
        """Tasks share a p-tuning encoder when any candidate style is p-tuning: then they are searched together."""
        return "p-tuning" in self.styles(default_style)


def apportion(total: int, shares: list[float]) -> list[int]:
    """Integer splits >= 1 summing to `total`, proportional to `shares` (largest remainder). Needs
    total >= len(shares) and positive shares (see `search_problems`)."""
    n, weight = len(shares), sum(shares)
    exact = [total * s / weight for s in shares]
    out = [max(1, int(x)) for x in exact]
    while sum(out) < total:  # the largest remainders get one more
        out[max(range(n), key=lambda i: exact[i] - out[i])] += 1
    while sum(out) > total:  # the 1-floors overshot: take from the most over-served split above 1
        out[max((i for i in range(n) if out[i] > 1), key=lambda i: out[i] - exact[i])] -= 1
    return out


def marker_count(template: dict) -> int:
    """The number of <|VIRTUAL_PROMPT_n|> markers in a template dict's prompt_template."""
    parts, _ = parse_template(str(template.get("prompt_template", "")))
    return sum(isinstance(p, Virtual) for p in parts)


def search_problems(cfg: JobConfig) -> list[str]:
    """Problems of the search space with the model section; none when there is no `search:`."""
    s = cfg.search
    if s is None:
        return []
    m, problems = cfg.model, []
    templates = {t.get("taskname"): t for t in m.task_templates}
    for name in m.new_tasks:
        if name not in s.tasks:
            problems.append(f"search.tasks: new task {name!r} has no entry; add one (e.g. "
                            f"{name}: {{total_virtual_tokens: [8, 16]}})")
    for name, space in s.tasks.items():
        where = f"search.tasks.{name}"
        if name not in m.new_tasks:
            problems.append(f"{where}: {name!r} is not in model.new_tasks {m.new_tasks}; search new tasks only")
            continue
        problems += _task_problems(where, space, marker_count(templates.get(name, {})), s.joint(
            m.virtual_prompt_style), name, m)
    problems += _run_problems(cfg)
    return problems


def _task_problems(where: str, space: TaskSpace, markers: int, joint: bool, name: str, m) -> list[str]:
    problems, counts = [], space.counts
    if space.total_virtual_tokens is None:
        problems.append(f"{where}.total_virtual_tokens: missing; give {RANGE_FORMS}")
    elif not counts:
        problems.append(f"{where}.total_virtual_tokens: empty choice list; give at least one count")
    low = [c for c in counts if c < max(1, markers)]
    if low:
        problems.append(f"{where}.total_virtual_tokens: counts {low} are below the template's {markers} "
                        f"virtual marker(s); every marker needs >= 1 token, use counts >= {max(1, markers)}")
    problems += _split_problems(where, space.splits, markers)
    if space.init is not None and not space.init:
        problems.append(f"{where}.init: empty choice list; give init methods (text, random, vocab) or drop it")
    if "text" in (space.init or []) and not (space.init_text or _config_init_text(name, m)):
        problems.append(f"{where}.init: 'text' needs {where}.init_text (or model.prompt_tuning.new_prompt_init_text)")
    if space.lr is not None and joint:
        problems.append(f"{where}.lr: tasks are searched jointly (a p-tuning style shares one encoder and one "
                        "optimizer); give the learning rate range as search.lr instead")
    return problems


def _split_problems(where: str, splits: Optional[list[list[float]]], markers: int) -> list[str]:
    if splits is None:
        return []
    if not splits:
        return [f"{where}.splits: empty choice list; give share candidates (one share per marker) or drop it"]
    problems = []
    for i, shares in enumerate(splits):
        if len(shares) != markers:
            problems.append(f"{where}.splits[{i}]: {shares} has {len(shares)} share(s) but the template has "
                            f"{markers} virtual marker(s); give one share per marker")
        if any(x <= 0 for x in shares):
            problems.append(f"{where}.splits[{i}]: {shares} has shares <= 0, so its splits cannot all be >= 1 "
                            "and sum to the total; use positive shares")
    return problems


def _config_init_text(name: str, m) -> Optional[str]:
    texts = m.prompt_tuning.new_prompt_init_text
    i = m.new_tasks.index(name) if name in m.new_tasks else -1
    return texts[i] if 0 <= i < len(texts) else None


def _run_problems(cfg: JobConfig) -> list[str]:
    s, problems = cfg.search, []
    if cfg.ray.max_failures != 0:
        problems.append(f"ray.max_failures: {cfg.ray.max_failures}; search trials are not restarted (a failed "
                        "trial is recorded as an error in trials.json and the search goes on); set it to 0")
    if not cfg.model.data.validation_ds:
        problems.append("model.data.validation_ds: empty; a search ranks trials by a validation metric, so give "
                        "validation files")
    if cfg.model.lm_finetune:
        problems.append("model.lm_finetune: true; a search tunes prompts only, turn lm_finetune off")
    if s.metric == "val_accuracy" and any(not t.get("answer_field") for t in cfg.model.task_templates
                                          if t.get("taskname") in cfg.model.new_tasks):
        problems.append("search.metric: val_accuracy needs answer_field in every new task's template; "
                        "set it, or use metric: val_loss")
    for name, space in s.tasks.items():
        problems += _label_problems(f"search.tasks.{name}.labels", space.labels)
    return problems + (_budget_problems(cfg) if s.budget_steps is not None else [])


def _label_problems(where: str, labels: Optional[list[str]]) -> list[str]:
    if labels is None:
        return []
    problems = []
    if len(labels) < 2:
        problems.append(f"{where}: {labels} has fewer than 2 labels; give the task's answers or drop it")
    repeated = sorted({lab for lab in labels if labels.count(lab) > 1})
    if repeated:
        problems.append(f"{where}: {labels} repeats {repeated}; give each label once")
    if any(not lab.strip() for lab in labels):
        problems.append(f"{where}: {labels} has an empty label; give the answers as the data spell them")
    return problems


def _budget_problems(cfg: JobConfig) -> list[str]:
    """A budget search trains packs of prompt-tuning candidates of one task in one worker (search_plan.py)."""
    from promptray.jobs.search_plan import PlanError, plan_search  # it builds on this module

    s, problems = cfg.search, []
    if s.joint(cfg.model.virtual_prompt_style):
        problems.append("search.budget_steps: packed candidates are prompt-tuning prompts (a p-tuning encoder is "
                        "shared by the tasks it tunes); drop p-tuning from search.style / model.virtual_prompt_style, "
                        "or drop budget_steps")
    if cfg.world_size > 1:
        problems.append(f"search.budget_steps: a pack trains in one worker, but the job runs {cfg.world_size}; set "
                        "ray.num_workers: 1 (packs spread over the cluster as separate trials: search.brackets)")
    for task in s.tasks:
        if s.tasks[task].counts:
            try:
                plan_search(s, task, s.seed)
            except PlanError as e:
                problems.append(str(e))
    return problems

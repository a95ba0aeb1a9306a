"""A search planned from a budget: candidates, successive-halving rungs, Hyperband-style brackets.

`search.budget_steps` is the total number of optimizer steps over all candidates (a candidate that trains 40
steps uses 40). The candidates are every candidate count x `search.num_samples` samples, each with its own
learning rate, init and split drawn jointly: the learning rates are a Latin hypercube over the log range (the
range cut into counts x num_samples equal-width strata, one candidate at a seeded random point in each), laid
out so that the samples of every count fall in distinct 1/num_samples blocks: every count meets the whole
range, no count is judged on an unlucky learning rate alone, and no two candidates try nearly the same rate;
the inits cycle through the choices. The candidates are dealt
to `search.brackets` brackets; each bracket is one packed trial (one Tune trial, one model load).

Inside a bracket of n candidates, successive halving (Jamieson & Talwalkar 2016; Li et al. 2018, "Hyperband"):
rung i trains the surviving candidates to `steps[i]` (cumulative), then keeps the best `keep[i]` by the
objective (each candidate's best value so far). Rung steps grow by `reduction_factor` (eta) and the first rung
is at least `search.grace_fraction` of the last one, so a large prompt gets that share of the full length
before any cut (fewer halvings when eta^k would go below it; bracket b allows b fewer halvings, Hyperband's
more patient brackets). The full length R is the largest for which the bracket's cost, the sum over rungs of
survivors x steps trained in the rung, fits its share of the budget. `search.train_best` adds a last rung in
which only the bracket's best trains on, to eta x R: the budget's end goes to the candidate that will be
published. Plain values only (no Ray, no torch).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Optional

from promptray.jobs.search_config import SearchConfig


@dataclass(frozen=True)
class Bracket:
    """One packed trial: its candidates' choices, the cumulative steps of each rung, and how many candidates
    go on after each rung (`keep[-1]`: those that end the bracket; the best of them is its result)."""

    candidates: list[dict[str, Any]]
    steps: list[int]
    keep: list[int]

    @property
    def max_steps(self) -> int:
        """The schedule length of every candidate (the last rung's steps)."""
        return self.steps[-1]

    @property
    def cost(self) -> int:
        """Optimizer steps the bracket trains when no candidate fails: survivors x steps, summed over rungs."""
        alive, total, prev = len(self.candidates), 0, 0
        for steps, keep in zip(self.steps, self.keep):
            total, prev, alive = total + alive * (steps - prev), steps, keep
        return total


@dataclass(frozen=True)
class Plan:
    brackets: list[Bracket] = field(default_factory=list)

    @property
    def cost(self) -> int:
        return sum(b.cost for b in self.brackets)

    def summary(self) -> list[dict[str, Any]]:
        """Per bracket, what a user checks before the compute is spent: its candidates' number, the rungs
        (cumulative optimizer steps and the candidates that go on after each), its cost in optimizer steps, and
        the steps the candidate it publishes trains."""
        return [{"candidates": len(b.candidates), "rungs": [{"steps": s, "keep": k} for s, k in zip(b.steps, b.keep)],
                 "optimizer_steps": b.cost, "published_steps": b.max_steps} for b in self.brackets]

    def describe(self) -> str:
        """Per bracket a line, e.g. `bracket 0: 6 candidates, rungs at 50 / 150 / 450 steps keeping 2 / 1 / 1;
        800 optimizer steps, the published candidate trains 450`, then a line per candidate (`  c0:
        total_virtual_tokens 20, lr 0.0533, init text`: its choices, named as in trials.csv)."""
        lines = []
        for i, (b, bracket) in enumerate(zip(self.summary(), self.brackets)):
            lines.append(f"bracket {i}: {b['candidates']} candidates, rungs at "
                         f"{' / '.join(str(r['steps']) for r in b['rungs'])} steps keeping "
                         f"{' / '.join(str(r['keep']) for r in b['rungs'])}; {b['optimizer_steps']} optimizer "
                         f"steps, the published candidate trains {b['published_steps']}")
            lines += [f"  c{j}: " + ", ".join(f"{k.rsplit('.', 1)[-1]} {v:.3g}" if isinstance(v, float) else
                                              f"{k.rsplit('.', 1)[-1]} {v}" for k, v in choice.items())
                      for j, choice in enumerate(bracket.candidates)]
        return "\n".join(lines)


class PlanError(ValueError):
    """The budget cannot train the candidates (raised with the key, value and fix in its message)."""


def candidates(s: SearchConfig, task: str, seed: int) -> list[dict[str, Any]]:
    """Every candidate of `task`'s space as a trial choice (the keys search_space.trial_config reads):
    count x num_samples, learning rates a Latin hypercube (stratified per count and over all), inits cycled,
    splits drawn."""
    sp, rng = s.tasks[task], random.Random(seed)
    lr_key, lr = (f"{task}.lr", sp.lr) if sp.lr is not None else ("lr", s.lr)
    out, n_counts = [], len(sp.counts)
    within = [rng.sample(range(n_counts), n_counts) for _ in range(s.num_samples)]  # block -> count's sub-stratum
    for ci, count in enumerate(sp.counts):
        blocks = rng.sample(range(s.num_samples), s.num_samples)  # which block of the range each sample takes
        for j in range(s.num_samples):
            choice: dict[str, Any] = {f"{task}.total_virtual_tokens": count}
            if lr is not None:  # u in [0, 1): one point in each of the counts x samples strata
                u = (blocks[j] * n_counts + within[blocks[j]][ci] + rng.random()) / (n_counts * s.num_samples)
                choice[lr_key] = math.exp(math.log(lr.min) + u * (math.log(lr.max) - math.log(lr.min)))
            if sp.init:
                choice[f"{task}.init"] = sp.init[(ci + j) % len(sp.init)]
            if sp.splits and len(sp.splits) > 1:
                choice[f"{task}.split"] = rng.randrange(len(sp.splits))
            out.append(choice)
    return out


def halving(n: int, eta: float, max_halvings: int) -> list[int]:
    """Candidates alive in each rung: n, then n // eta per rung (at least 1), at most `max_halvings` cuts."""
    alive = [n]
    while alive[-1] > 1 and len(alive) <= max_halvings:
        alive.append(max(1, int(alive[-1] // eta)))
    return alive


def plan_bracket(choices: list[dict[str, Any]], budget: int, eta: float, grace_fraction: float,
                 patience: int = 0, train_best: bool = False) -> Optional[Bracket]:
    """The bracket of `choices` with the longest full length whose cost fits `budget` (fewer halvings when
    the rungs would not be distinct); None when not even one rung of 1 step per candidate fits."""
    most = max(0, int(math.floor(math.log(1 / grace_fraction, eta) + 1e-9)) - patience)
    for halvings in range(most, -1, -1):
        alive = halving(len(choices), eta, halvings)
        if train_best and alive[-1] > 1:
            alive.append(1)
        bracket = _longest(choices, alive, budget, eta)
        if bracket is not None:
            return bracket
    return None


def _longest(choices: list[dict[str, Any]], alive: list[int], budget: int, eta: float) -> Optional[Bracket]:
    k = len(alive) - 1
    keep = alive[1:] + [alive[-1]]
    coef = sum(alive[i] * (eta ** (i - k) - (eta ** (i - 1 - k) if i else 0.0)) for i in range(k + 1))
    for full in range(int(budget / coef) + 1, 0, -1):
        steps = [max(1, round(full * eta ** (i - k))) for i in range(k + 1)]
        if any(b <= a for a, b in zip(steps, steps[1:])):
            return None  # rungs collapse at this length (and at every shorter one)
        bracket = Bracket(list(choices), steps, keep)
        if bracket.cost <= budget:
            return bracket
    return None


def plan_search(s: SearchConfig, task: str, seed: int) -> Plan:
    """The plan of a budget search of `task` (s.budget_steps set). PlanError when the budget cannot give every
    candidate of a bracket a first rung."""
    pool = candidates(s, task, seed)
    if s.brackets > len(pool):
        raise PlanError(f"search.brackets: {s.brackets} brackets for the {len(pool)} candidate(s) of task {task!r} "
                        f"(counts x num_samples); give at most {len(pool)}, each bracket takes its share of them")
    plan = _plan(s, pool, s.budget_steps)
    if plan is None:
        raise PlanError(f"search.budget_steps: {s.budget_steps} cannot train the {len(pool)} candidate(s) of task "
                        f"{task!r} in {s.brackets} bracket(s) to a first rung; give at least "
                        f"{_least_budget(s, pool)} steps, or fewer counts / num_samples / brackets")
    return plan


def _plan(s: SearchConfig, pool: list[dict[str, Any]], budget: int) -> Optional[Plan]:
    brackets = []
    for b in range(s.brackets):
        bracket = plan_bracket(pool[b::s.brackets], budget // s.brackets, s.reduction_factor, s.grace_fraction,
                               patience=b, train_best=s.train_best)
        if bracket is None:
            return None
        brackets.append(bracket)
    return Plan(brackets)


def _least_budget(s: SearchConfig, pool: list[dict[str, Any]]) -> int:
    """The smallest budget that plans (bisection: a larger budget never plans fewer steps)."""
    low, high = s.budget_steps, max(2 * s.budget_steps, 2)
    while _plan(s, pool, high) is None:
        low, high = high, 2 * high
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if _plan(s, pool, mid) is not None else (mid, high)
    return high

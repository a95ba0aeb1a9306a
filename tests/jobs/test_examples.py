"""The configs under examples/ load as written (schema and cross-key checks; data files are not read), and the
budget search example plans what its comments say."""

from __future__ import annotations

from pathlib import Path

import pytest

from promptray.jobs.config import load_job_config
from promptray.jobs.search import budget_plans

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_config_loads(path):
    assert load_job_config(str(path)).name == path.stem


def test_the_questions_budget_search_plans_its_commented_rungs():
    cfg = load_job_config(str(EXAMPLES[[p.name for p in EXAMPLES].index("questions_search.yaml")]))
    (bracket,) = budget_plans(cfg)["question_type"].brackets
    assert bracket.steps == [75, 225, 675] and bracket.keep == [2, 1, 1] and bracket.cost == 1200

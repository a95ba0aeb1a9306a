"""Every typed error survives a process boundary: Ray pickles an error raised in a task, an actor or a job
and raises it again in the caller, so unpickled it must be the same class with the same message and
attributes, whatever its `__init__` takes."""

import importlib
import pickle
import pkgutil

import pytest

from promptray.platform.errors import PromptrayError

# errors whose __init__ is not (message): the arguments a real raise passes
BUILT = {
    "ConfigError": (["model.optim.lr: got -1; use a value > 0.0", "trainer.max_steps: got 0"],),
    "JobConfigError": (["search.tasks: required"],),
    "QueueFullError": ("the waiting queue holds 64 requests", 3),
    "ServerBusyError": ("the waiting queue is full",),
    "JobNotFoundError": ("raysubmit_123", "http://127.0.0.1:8265"),
    "JobFailedError": ("raysubmit_123", "FAILED", "trainer.max_steps: got 0", "Traceback ...\nConfigError"),
}
KEYWORDS = {"ServerBusyError": {"retry_after_s": 3, "queued": 64}, "JobConfigError": {"job": "search job"}}


def all_errors() -> list[type]:
    for pkg in ("platform", "jobs", "serve", "sdk"):
        root = importlib.import_module(f"promptray.{pkg}")
        for mod in pkgutil.walk_packages(root.__path__, f"promptray.{pkg}."):
            importlib.import_module(mod.name)
    seen, todo = [], [PromptrayError]
    while todo:
        cls = todo.pop()
        seen.append(cls)
        todo += cls.__subclasses__()
    return sorted({c for c in seen if c.__module__.startswith("promptray.")}, key=lambda c: c.__qualname__)


def build(cls: type) -> PromptrayError:
    known = next((c.__name__ for c in cls.__mro__ if c.__name__ in BUILT), None)  # its __init__'s class
    if known is not None:
        return cls(*BUILT[known], **KEYWORDS.get(known, {}))
    try:
        return cls(f"{cls.__name__}: task 'x' has no prompt; train it first")
    except TypeError:
        raise AssertionError(f"{cls.__qualname__}: add the arguments a real raise passes to BUILT") from None


def test_every_error_class_is_found():
    names = {c.__name__ for c in all_errors()}
    assert set(BUILT) <= names and {"PromptrayError", "DatasetError", "SearchFailed", "UnknownTaskError"} <= names


@pytest.mark.parametrize("cls", all_errors(), ids=lambda c: c.__qualname__)
def test_an_error_unpickles_as_it_was_raised(cls):
    e = build(cls)
    e.extra = {"note": [1, 2]}  # an attribute set after the raise travels too
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is cls and str(back) == str(e) and back.args == e.args
    assert back.__dict__ == e.__dict__


def test_attributes_a_handler_reads_survive():
    from promptray.serve.errors import ServerBusyError

    back = pickle.loads(pickle.dumps(ServerBusyError("the waiting queue is full", retry_after_s=3)))
    assert back.headers() == {"Retry-After": "3"} and back.status == 503
    assert back.body()["error"]["retry_after_s"] == 3

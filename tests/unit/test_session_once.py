"""tests.helpers.once: what the session fixtures build is built once for all pytest-xdist workers,
and a build that failed on one worker fails the others at once instead of running again; the demo
run's test files are scheduled on one worker (tests.helpers.scheduling_unit)."""

import re

import pytest

from tests.helpers import ROOT, SAME_WORKER, once, scheduling_unit


class Worker:
    """What ``once`` reads of a worker's ``tmp_path_factory``: its base folder, one per worker
    under the session's shared folder (as pytest-xdist lays them out)."""

    def __init__(self, shared, name):
        self.base = shared / f"popen-{name}"
        self.base.mkdir(parents=True, exist_ok=True)

    def getbasetemp(self):
        return self.base


def test_the_first_worker_builds_and_the_others_read(tmp_path, monkeypatch):
    built = []

    def make():
        built.append(1)
        return [str(tmp_path / "model"), "log"]

    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    assert once(Worker(tmp_path, "gw0"), "model", make) == [str(tmp_path / "model"), "log"]
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    assert once(Worker(tmp_path, "gw1"), "model", make) == [str(tmp_path / "model"), "log"]
    assert once(Worker(tmp_path, "gw1"), "other", lambda: 7) == 7
    assert len(built) == 1


def test_a_failed_build_fails_the_other_workers_without_running_again(tmp_path, monkeypatch):
    calls = []

    def make():
        calls.append(1)
        raise RuntimeError("training diverged")

    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    with pytest.raises(RuntimeError, match="training diverged"):
        once(Worker(tmp_path, "gw0"), "model", make)
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    with pytest.raises(pytest.fail.Exception, match="model failed on worker gw0"):
        once(Worker(tmp_path, "gw1"), "model", make)
    assert len(calls) == 1


def test_without_workers_it_simply_builds(tmp_path, monkeypatch):
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    calls = []
    assert once(Worker(tmp_path, "master"), "model", lambda: calls.append(1) or "x") == "x"
    assert once(Worker(tmp_path, "master"), "model", lambda: calls.append(1) or "x") == "x"
    assert len(calls) == 2
    assert not list(tmp_path.glob("model.*"))  # nothing shared written


def test_every_test_file_of_the_demo_run_is_scheduled_as_one_unit():
    """The tests of the demo run's files go to one worker (one demo run per session); a new file
    that takes the fixture without being listed would run the demo again on another worker."""
    users = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "tests").rglob("test_*.py")
        if re.search(r"def \w+\([^)]*\bdemo_driver_run\b", path.read_text(encoding="utf-8"))
    }
    assert users == set(SAME_WORKER["demo"])
    units = {scheduling_unit(f"{path}::test_x[a::b]") for path in users}
    assert units == {"demo"}
    other = "tests/recipes/test_ddp.py::test_torchrun_two_processes_train_and_evaluate"
    assert scheduling_unit(other) == other

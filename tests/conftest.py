"""Shared fixtures: the tiny random models (built once per test session, as the demo builds its
own, and loaded by the real YAMLs through their ordinary ``wavlm_source`` / ``separator_source``),
the recipes as the tests run them (real YAML + ``tests/hparams/*-overrides.yaml``), and one tiny
speaker experiment trained once by the real speaker recipe, for the tests that need a trained
speaker model (joint, separation).

The suite runs on pytest-xdist's workers (``-n auto`` in pyproject.toml), and what a session
fixture builds is built once for all of them (tests.helpers.once), except the demo driver's run,
whose tests run on one worker (it cleans up after itself: :func:`pytest_xdist_make_scheduler`)."""

import collections
import os
import re
import shutil
import uuid
from pathlib import Path

import pytest

from sepid.tiny import save_tiny_sepformer, save_tiny_wavlm
from tests.helpers import (
    _FORK_SERVER,
    ROOT,
    Recipe,
    once,
    run_demo_driver,
    run_script,
    scheduling_unit,
)

# in pytest-xdist's controller: each worker's commands per fork server, and new interpreters
_WORKER_COUNTS = []


def pytest_configure(config):
    """In pytest-xdist's controller, before the workers start: one thread per worker and per
    command (``OMP_NUM_THREADS=1`` unless set: the workers take the cores; two workers of two
    threads each on two cores spent about 15 % more CPU, spinning), and the fork server, whose
    socket the workers inherit, so that one server and its per-environment servers serve them
    all. Started with the ``PYTHONPATH`` the workers will have (pytest-xdist puts the working
    folder first), the workers' commands fork from it rather than from a server of their own."""
    workers = config.pluginmanager.hasplugin("xdist") and config.getoption("numprocesses")
    if workers and not hasattr(config, "workerinput"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        if os.environ.get("SEPID_TESTS_FORKSERVER", "1") != "0":
            path = os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])
            _FORK_SERVER.ensure(env={**os.environ, "PYTHONPATH": path})


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's ``load`` distribution (a test at a time to whichever worker is free), except
    that the tests of each ``tests.helpers.SAME_WORKER`` group go to one worker, as a unit (what
    ``--dist loadgroup`` does with ``xdist_group`` marks, which pytest 9.2 + pytest-xdist 3.8
    ignore: the group is appended to ``item._nodeid``, which pytest 9.2 no longer reads)."""
    from xdist.scheduler import LoadScopeScheduling

    class Scheduler(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return scheduling_unit(nodeid)

    return Scheduler(config, log)


def pytest_sessionfinish(session):
    """On a pytest-xdist worker: what its commands used, for the controller's summary."""
    if hasattr(session.config, "workeroutput"):
        session.config.workeroutput["fork_counts"] = [
            _FORK_SERVER.per_server(),
            _FORK_SERVER.new_interpreters,
        ]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    _WORKER_COUNTS.append(getattr(node, "workeroutput", {}).get("fork_counts", [{}, 0]))


def pytest_terminal_summary(terminalreporter):
    """How the session's ``python ...`` commands of tests.helpers.run_python ran."""
    per_server, new = collections.Counter(_FORK_SERVER.per_server()), _FORK_SERVER.new_interpreters
    for forked, worker_new in _WORKER_COUNTS:
        per_server.update(forked)
        new += worker_new
    used = sum(1 for n in per_server.values() if n)
    terminalreporter.write_line(
        f"script commands (tests/forkserver.py): {sum(per_server.values())} forked, "
        f"{used} servers, {new} new interpreter"
    )


@pytest.fixture(scope="session")
def tiny_wavlm(tmp_path_factory):
    """A tiny random WavLM (``sepid.tiny.TINY_WAVLM``) saved with ``save_pretrained``: what the
    tests pass as ``--wavlm_source`` in place of ``microsoft/wavlm-base-plus``."""

    def make():
        return str(save_tiny_wavlm(tmp_path_factory.mktemp("tiny-models") / "tiny-wavlm"))

    return Path(once(tmp_path_factory, "tiny_wavlm", make))


@pytest.fixture(scope="session")
def tiny_sepformer(tmp_path_factory):
    """A tiny random SepFormer (``sepid.tiny.TINY_SEPFORMER``) in ``speechbrain/sepformer-whamr``'s
    layout: the tests' ``--separator_source``."""

    def make():
        return str(save_tiny_sepformer(tmp_path_factory.mktemp("tiny-models") / "tiny-sepformer"))

    return Path(once(tmp_path_factory, "tiny_sepformer", make))


@pytest.fixture(scope="session")
def speaker_recipe(tiny_wavlm):
    """``hparams/wavlm-lora-arcface.yaml`` + ``tests/hparams/speaker-overrides.yaml``."""
    return Recipe(
        "hparams/wavlm-lora-arcface.yaml",
        "tests/hparams/speaker-overrides.yaml",
        (f"--wavlm_source={tiny_wavlm}",),
    )


@pytest.fixture(scope="session")
def joint_recipe(tiny_wavlm, tiny_sepformer):
    """``hparams/sepformer-wavlm-speaker.yaml`` + ``tests/hparams/joint-overrides.yaml``."""
    return Recipe(
        "hparams/sepformer-wavlm-speaker.yaml",
        "tests/hparams/joint-overrides.yaml",
        (f"--wavlm_source={tiny_wavlm}", f"--separator_source={tiny_sepformer}"),
    )


@pytest.fixture(scope="session")
def separation_recipe(tiny_sepformer):
    """``hparams/separation-eval.yaml`` + ``tests/hparams/separation-overrides.yaml``."""
    return Recipe(
        "hparams/separation-eval.yaml",
        "tests/hparams/separation-overrides.yaml",
        (f"--separator_source={tiny_sepformer}",),
    )


@pytest.fixture(scope="session")
def speaker_experiment(tmp_path_factory, speaker_recipe):
    """Output folder of a 1-epoch speaker training of the tests' setting (tiny random WavLM)."""

    def make():
        out = tmp_path_factory.mktemp("speaker-experiment")
        run_script(
            speaker_recipe.command(
                "recipes/speaker/train.py", f"--output_folder={out}", "--number_of_epochs=1"
            )
        )
        return str(out)

    return Path(once(tmp_path_factory, "speaker_experiment", make))


@pytest.fixture(scope="session")
def speaker_torchrun(tmp_path_factory, speaker_recipe):
    """Two epochs of the tests' speaker setting trained by torchrun (2 CPU processes, gloo) with
    the speaker YAML's ``activation_checkpointing: True``: one run serving test_ddp.py (which
    evaluates it with two processes and with one) and test_resume_exact.py (the uninterrupted run
    a killed and resumed torchrun run must equal). Returns ``(command, output folder)``, where
    ``command(out)`` is the run's command line (after ``python``) for output folder ``out``."""

    def command(out):
        return [
            # --standalone: a free rendezvous port (xdist's workers run torchrun side by side)
            *("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"),
            *speaker_recipe.command(
                "recipes/speaker/train.py",
                f"--output_folder={out}",
                "--number_of_epochs=2",
                "--distributed_backend=gloo",
                "--activation_checkpointing=True",
            ),
        ]

    def make():
        out = tmp_path_factory.mktemp("speaker-torchrun") / "run"
        run_script(command(out))
        return str(out)

    return command, Path(once(tmp_path_factory, "speaker_torchrun", make))


@pytest.fixture(scope="session")
def exported_speaker(speaker_experiment, tmp_path_factory):
    """The session's speaker experiment exported by pretrained_interfaces/export.py (merged LoRA,
    no threshold: not evaluated), as the separation and joint recipes take it."""
    from pretrained_interfaces.export import export_speaker

    def make():
        out = tmp_path_factory.mktemp("exported") / "speaker"
        return str(export_speaker(run_folder=speaker_experiment, out=out))

    return Path(once(tmp_path_factory, "exported_speaker", make))


@pytest.fixture(scope="session")
def joint_run(speaker_experiment, exported_speaker, joint_recipe, tmp_path_factory):
    """One epoch of the tests' joint setting on a few dynamic mixtures, its speaker branch from the
    exported speaker model; returns ``(output folder, log)``."""

    def make():
        out = tmp_path_factory.mktemp("joint-run") / "run"
        log = run_script(
            joint_recipe.command(
                "recipes/joint/train.py",
                f"--output_folder={out}",
                f"--speaker_source={exported_speaker}",
                f"--speaker_manifest={Path(speaker_experiment) / 'prep' / 'train.csv'}",
                "--number_of_epochs=1",
                "--n_train_mixtures=4",
                "--n_valid_mixtures=2",
            )
        )
        return [str(out), log]

    out, log = once(tmp_path_factory, "joint_run", make)
    return Path(out), log


@pytest.fixture(scope="session")
def exported_joint(joint_run, tmp_path_factory):
    """The joint run exported by the command its training logged."""
    _, log = joint_run

    def make():
        command = re.search(r"(pretrained_interfaces/export\.py \S+ --out \S+)", log).group(1)
        run_script(command.split())
        return command.split()[-1]

    return Path(once(tmp_path_factory, "exported_joint", make))


@pytest.fixture(scope="session")
def demo_driver_run():
    """The offline demo (``recipes/demo/run.py``) run once per session on the tests' small setting
    (``tests/recipes/test_demo_driver.py``: its speaker stage on
    ``tests.helpers.DEMO_SPEAKER_SHORT``), inside the repository (as the demo writes under results/), every Python process
    recording the files it opens; yields ``(output folder, first run, files opened outside the
    repository)``. Shared by test_demo_driver.py and test_demo_speaker.py, which checked the same
    stage with two runs before."""
    work = ROOT / "results" / "tests" / f"demo-driver-{uuid.uuid4().hex[:8]}"
    out = work / "demo"
    try:
        first = run_demo_driver(out, audit=work / "audit")
        assert first.returncode == 0, (
            f"the demo failed:\n{first.stdout[-3000:]}\n{first.stderr[-5000:]}"
        )
        outside, commands = set(), []
        for report in (work / "audit").glob("*.txt"):
            outside |= set(report.read_text().split())
            commands.append(report.with_suffix(".cmd").read_text())
        # every Python process of the demo reported: the driver and each of its 11 stages
        assert sum("recipes/demo/run.py" in c for c in commands) == 1, commands
        assert len(commands) >= 12, commands
        yield out, first, outside
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="session")
def speaker_evaluated(tmp_path_factory, speaker_recipe, speaker_experiment):
    """A copy of the session's speaker experiment evaluated once by recipes/speaker/evaluate.py
    (eval/metrics.json, the embedding tables, the EER threshold; its hyperparams.yaml names this
    folder, so export.py takes it). Shared read-only by test_publish.py,
    test_speaker_interface.py and test_speaker_sources.py, which each evaluated their own copy
    before: a test that writes into a run copies this folder and evaluates or trains the copy
    (export.py needs the run's YAML to name the folder it reads)."""

    def make():
        out = tmp_path_factory.mktemp("speaker-evaluated") / "run"
        shutil.copytree(speaker_experiment, out)
        run_script(speaker_recipe.command("recipes/speaker/evaluate.py", f"--output_folder={out}"))
        return str(out)

    return Path(once(tmp_path_factory, "speaker_evaluated", make))

"""Bad input and misuse are refused early, with one clear error, by the real recipe scripts
(issue 10 rows 5, 9, 10, 11): one run per output folder, a folder that can be written, overrides
of the right type, data that can train a classifier."""

import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from sepid.training.experiment import LOCK_NAME
from tests.helpers import run_python

ROOT = Path(__file__).resolve().parents[2]
TRAIN = "recipes/speaker/train.py"


def fails(*args):
    """Runs a recipe script that must fail; returns its output."""
    proc = run_python(args)
    assert proc.returncode != 0, f"{args} succeeded:\n{proc.stderr[-2000:]}"
    return proc.stdout + proc.stderr


def refused_here(script, *args):
    """Runs a recipe script in this process as ``python script args`` runs it (``runpy``, as
    ``__main__``, from the repository root) where it must refuse its arguments with a
    ``ValueError`` before any work; returns the message. For the checks that precede the output
    folder's lock and any import-time difference: the same code as :func:`fails` without a second
    interpreter (torch, SpeechBrain and transformers imported again, ~6 s each)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)
        patch.setattr(sys, "argv", [str(ROOT / script), *map(str, args)])
        with pytest.raises(ValueError) as refused:
            runpy.run_path(str(ROOT / script), run_name="__main__")
    return str(refused.value)


HOLD_LOCK = (
    "import sys; from sepid.training.experiment import lock_output_folder; "
    "lock_output_folder(sys.argv[1]); print('locked', flush=True); sys.stdin.read()"
)


def python_c(code, folder):
    """``python -c code folder`` with its stdin and stdout piped to this process."""
    return subprocess.Popen(
        [sys.executable, "-c", code, str(folder)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def lock_holder(folder):
    """Another process holding the lock on ``folder``, from the moment this returns (it says
    so on its stdout: no timing) until its stdin is closed or it is killed."""
    holder = python_c(HOLD_LOCK, folder)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def can_lock(folder):
    check = subprocess.run(
        [sys.executable, "-c", HOLD_LOCK, str(folder)],
        cwd=ROOT,
        input="",
        capture_output=True,
        text=True,
    )
    return check.stdout.strip() == "locked"


def test_a_second_run_into_the_same_output_folder_is_refused(tmp_path, speaker_recipe):
    holder = lock_holder(tmp_path)
    try:
        err = fails(*speaker_recipe.command(TRAIN, f"--output_folder={tmp_path}"))
        assert f"is in use by a running job (pid {holder.pid} on" in err
        assert "--output_folder=<another folder>" in err
        assert not (tmp_path / "prep").exists()  # refused before any work
    finally:
        holder.stdin.close()
        holder.wait()
    # The holder is gone (its lock with it, whatever the lock file still says): a run may start.
    assert f"pid {holder.pid}" in (tmp_path / LOCK_NAME).read_text()
    assert can_lock(tmp_path)


def test_a_lock_of_a_killed_process_does_not_block(tmp_path):
    holder = lock_holder(tmp_path)
    holder.kill()  # kill -9: no clean-up, the lock file stays
    holder.wait()
    assert (tmp_path / LOCK_NAME).is_file()
    assert can_lock(tmp_path)


FORK_A_WORKER_AND_DIE = (
    "import os, signal, sys; from sepid.training.experiment import lock_output_folder; "
    "lock_output_folder(sys.argv[1]); pid = os.fork(); "
    "(sys.stdin.read(), os._exit(0)) if pid == 0 else None; "
    "print(pid, flush=True); os.kill(os.getpid(), signal.SIGKILL)"
)


def test_a_worker_outliving_its_killed_parent_does_not_hold_the_lock(tmp_path):
    """A process forked by the lock holder (as a DataLoader worker is) and still running after
    the holder was killed does not block the rerun: it never held the lock. (Before, a run
    killed with num_workers=1 was refused by its rerun until the orphaned worker noticed and
    exited.)"""
    holder = python_c(FORK_A_WORKER_AND_DIE, tmp_path)
    worker = int(holder.stdout.readline())
    assert holder.wait() == -9
    try:
        os.kill(worker, 0)  # the worker is still running (it waits on its stdin)
        assert can_lock(tmp_path)
    finally:
        holder.stdin.close()  # the worker's stdin too: it exits


@pytest.mark.parametrize("folder", ["/proc/sepid-cannot-write", "READONLY"])
def test_an_output_folder_that_cannot_be_written_is_named(tmp_path, speaker_recipe, folder):
    if folder == "READONLY":
        readonly = tmp_path / "ro"
        readonly.mkdir()
        readonly.chmod(0o500)
        folder = readonly / "out"
        if subprocess.run(["touch", str(readonly / "x")], capture_output=True).returncode == 0:
            pytest.skip("running as a user who can write into read-only folders (root)")
    err = fails(*speaker_recipe.command(TRAIN, f"--output_folder={folder}"))
    assert f"Cannot write to the output folder {folder}" in err
    assert "--output_folder=<a writable folder>" in err


def test_an_override_of_the_wrong_type_is_refused_before_any_work(tmp_path, speaker_recipe):
    err = refused_here(
        *speaker_recipe.command(TRAIN, f"--output_folder={tmp_path}", "--batch_size", "abc")
    )
    assert "--batch_size='abc': expected a number" in err
    assert "batch_size: 32" in err  # the YAML's default, to compare with
    assert not (tmp_path / "prep").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        # issue 22 row 14: each names the key the user gave, before data prep
        ("--total_steps=abc", "--total_steps='abc': expected a whole number above 0 (or null)"),
        ("--number_of_epochs=-1", "--number_of_epochs=-1: expected a whole number above 0"),
        ("--segment_seconds=0", "--segment_seconds=0: expected a number above 0"),
        ("--lora_targets=q_proj", "expected a list, e.g. --lora_targets=[q_proj]"),
    ],
)
def test_an_override_out_of_range_is_named_before_any_work(
    tmp_path, speaker_recipe, override, message
):
    err = refused_here(*speaker_recipe.command(TRAIN, f"--output_folder={tmp_path}", override))
    assert message in err
    assert "total_steps=-" not in err  # not a key derived from the one given
    assert not (tmp_path / "prep").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--speakers=[1688]", "has 1 speaker(s): speaker classification needs at least 2"),
        ("--batch_size=1000", "fewer than batch_size 1000"),
    ],
)
def test_data_that_cannot_train_is_refused_before_training(
    tmp_path, speaker_recipe, override, message
):
    err = fails(*speaker_recipe.command(TRAIN, f"--output_folder={tmp_path}", override))
    assert message in err
    assert not list((tmp_path / "save").glob("CKPT+*"))
    assert not (tmp_path / "train_log.txt").exists()


def test_make_mixtures_refuses_a_folder_in_use(tmp_path):
    """The same guard for the mixture writer: a second run would take the first one's
    temporary files for leftovers of a killed run and remove them."""
    holder = lock_holder(tmp_path)
    try:
        err = fails(
            "data_prep/make_mixtures.py",
            "--manifest=tests/samples/none.csv",
            "--data_folder=tests/samples",
            f"--save_folder={tmp_path}",
        )
        assert "is in use by a running job" in err and "--save_folder=<another folder>" in err
    finally:
        holder.stdin.close()
        holder.wait()


def test_speaker_recipe_skips_a_nan_batch_and_never_checkpoints_it(tmp_path, speaker_recipe):
    """Issue 10 row 1 on the real SpeakerBrain: a batch with a NaN sample (a float wav with NaN
    that got past prep) neither steps nor gets checkpointed; a finite batch then trains."""
    import importlib.util

    import speechbrain as sb
    import torch
    from speechbrain.dataio.batch import PaddedBatch

    spec = importlib.util.spec_from_file_location("speaker_train", ROOT / TRAIN)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    hparams = speaker_recipe.load(
        f"--output_folder={tmp_path}", "--n_speakers=2", "--augment=False", "--total_steps=100"
    )
    brain = recipe.SpeakerBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts={"noprogressbar": True},
        checkpointer=hparams["checkpointer"],
    )
    brain.on_fit_start()
    brain.on_stage_start(sb.Stage.TRAIN, 1)
    torch.manual_seed(0)
    wavs = 0.1 * torch.randn(2, 16000)
    bad = wavs.clone()
    bad[1, 5000] = float("nan")

    def batch(signals):
        return PaddedBatch(
            [
                {"id": str(i), "sig": s, "spk_id_encoded": torch.LongTensor([i])}
                for i, s in enumerate(signals)
            ]
        )

    before = {k: v.clone() for k, v in brain.modules.state_dict().items()}
    assert not torch.isfinite(brain.fit_batch(batch(bad)))
    assert brain.nonfinite_skipped == 1
    assert all(torch.equal(v, before[k]) for k, v in brain.modules.state_dict().items())
    brain.fit_batch(batch(wavs))
    assert brain.optimizer_step == 1
    assert all(torch.isfinite(v).all() for v in brain.modules.state_dict().values())
    brain.on_stage_end(sb.Stage.TRAIN, 1.0, 1)
    brain.on_stage_start(sb.Stage.VALID, 1)
    brain.evaluate_batch(batch(bad), sb.Stage.VALID)
    brain.on_stage_end(sb.Stage.VALID, 0.0, 1)  # SpeechBrain's average would read 0.00
    assert not list((tmp_path / "save").glob("CKPT+*"))

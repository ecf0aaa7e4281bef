"""The offline demo's driver (``recipes/demo/run.py``, the README's main job) on an even smaller
setting: every stage runs the real script and succeeds, the summary is written from the
evaluations' own metrics files, no Python process of the demo opens a file outside the repository,
a rerun skips every finished stage, and a failing stage stops the demo naming itself and the
command that reruns it alone."""

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DRIVER = "recipes/demo/run.py"
STAGES = [
    "tiny-wavlm",
    "speaker-train",
    "speaker-eval",
    "speaker-export",
    "mixtures",
    "tiny-sepformer",
    "separation-eval",
    "joint-train",
    "joint-eval",
    "joint-export",
    "use-exports",
]
# The demo's stages, shortened: 20 training speakers for 2 epochs, 6 test mixtures, one short
# joint epoch, no fbank baseline and no PESQ/STOI (the slowest metrics).
SMALL = [
    "speaker:--speakers=20",
    "speaker:--number_of_epochs=2",
    "speaker:--fbank_baseline=False",
    "mixtures:--n_test=6",
    "separation:--separation_metrics=[si_sdr, sdr]",
    "joint:--number_of_epochs=1",
    "joint:--n_train_mixtures=8",
    "joint:--n_valid_mixtures=2",
    "joint:--separation_metrics=[si_sdr, sdr]",
]


def _driver(out, *args, audit=None):
    env = {**os.environ}
    if audit is not None:  # every Python process of the demo records what it opens
        audit.mkdir(parents=True, exist_ok=True)
        env["SEPID_AUDIT_OPEN"] = str(audit)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests" / "audit"), str(ROOT)])
    cmd = [sys.executable, DRIVER, f"--output_folder={out}"]
    cmd += [f"--stage_override={o}" for o in SMALL] + list(args)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The whole demo, run once on the small setting inside the repository (as the demo writes
    under results/); yields ``(output folder, first run, files opened outside the repo)``."""
    work = ROOT / "results" / "tests" / f"demo-driver-{uuid.uuid4().hex[:8]}"
    out = work / "demo"
    try:
        first = _driver(out, audit=work / "audit")
        assert first.returncode == 0, (
            f"the demo failed:\n{first.stdout[-3000:]}\n{first.stderr[-5000:]}"
        )
        outside = set()
        for report in (work / "audit").glob("*.txt"):
            outside |= set(report.read_text().split())
        yield out, first, outside
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_every_stage_runs_and_the_summary_reads_the_metrics_files(demo):
    out, first, _ = demo
    for i, name in enumerate(STAGES, 1):
        assert f"[{i}/{len(STAGES)}] {name}:" in first.stdout
    summary = json.loads((out / "summary.json").read_text())
    speaker = json.loads(Path(summary["files"]["speaker"]).read_text())["models"]
    assert summary["speaker"]["trained on 251 speakers"]["eer"] == pytest.approx(
        100 * speaker["finetuned"]["verification"]["cosine"]["eer"], abs=0.01
    )
    joint = json.loads(Path(summary["files"]["joint"]).read_text())["systems"]
    assert summary["separation"]["jointly trained separator"]["si_sdri"] == pytest.approx(
        joint["joint model"]["separation"]["si_sdri"]["mean"]
    )
    assert set(summary["separation"]) == {
        "mixture (unprocessed)",
        "untrained tiny separator",
        "jointly trained separator",
    }
    use = summary["use"]
    assert set(use["verification"]) == {"same speaker", "different speakers"}
    assert len(use["separated_enrolled"]) == 2
    assert all(Path(s["path"]).is_file() for s in use["separated_enrolled"])
    assert (out / "summary.md").read_text().startswith("# Offline demo")


def test_the_demo_opens_nothing_outside_the_repository(demo):
    _, _, outside = demo
    assert not outside, f"opened outside {ROOT}: {sorted(outside)}"


def test_a_rerun_skips_every_finished_stage(demo):
    out, _, _ = demo
    again = _driver(out)
    assert again.returncode == 0, again.stderr[-3000:]
    for name in STAGES:
        assert f"{name}: " in again.stdout and "done before, skipped" in again.stdout
    assert again.stdout.count("done before, skipped") == len(STAGES)


def test_a_failing_stage_stops_the_demo_and_names_the_command(demo):
    out, _, _ = demo
    bad = _driver(out, "--stage_override=joint:--batch_size=two")
    assert bad.returncode != 0
    assert "stage 'joint-train' failed" in bad.stderr
    assert "Rerun it alone with:\n    python recipes/joint/train.py" in bad.stderr
    assert "--batch_size=two" in bad.stderr


def test_a_changed_stage_reruns_with_every_later_one(demo):
    out, _, _ = demo
    again = _driver(out, "--stage_override=mixtures:--seed=7", "--until=mixtures", "--overwrite")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("done before, skipped") == STAGES.index("mixtures")
    assert "[5/11] mixtures: two-speaker" in again.stdout and "done in" in again.stdout

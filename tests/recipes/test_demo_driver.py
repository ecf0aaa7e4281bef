"""The offline demo's driver (``recipes/demo/run.py``, the README's main job) on a smaller
setting, run once per session (tests/conftest.py::demo_driver_run, whose speaker stage
test_demo_speaker.py checks too): every stage runs the real script and succeeds, the summary is written from the
evaluations' own metrics files, no Python process of the demo opens a file outside the repository,
a rerun skips every finished stage, and a failing stage stops the demo naming itself and the
command that reruns it alone."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import run_demo_driver

ROOT = Path(__file__).resolve().parents[2]
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


@pytest.fixture
def demo(demo_driver_run):
    """The session's demo run (tests/conftest.py::demo_driver_run)."""
    return demo_driver_run


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
    again = run_demo_driver(out)
    assert again.returncode == 0, again.stderr[-3000:]
    for name in STAGES:
        assert f"{name}: " in again.stdout and "done before, skipped" in again.stdout
    assert again.stdout.count("done before, skipped") == len(STAGES)


def test_a_failing_stage_stops_the_demo_and_names_the_command(demo):
    out, _, _ = demo
    bad = run_demo_driver(out, "--stage_override=joint:--batch_size=two")
    assert bad.returncode != 0
    assert "stage 'joint-train' failed" in bad.stderr
    assert "Rerun it alone with:\n    python recipes/joint/train.py" in bad.stderr
    assert "--batch_size=two" in bad.stderr


def test_a_changed_stage_reruns_with_every_later_one(demo):
    out, _, _ = demo
    again = run_demo_driver(
        out, "--stage_override=mixtures:--seed=7", "--until=mixtures", "--overwrite"
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("done before, skipped") == STAGES.index("mixtures")
    assert "[5/11] mixtures: two-speaker" in again.stdout and "done in" in again.stdout


def _interval(low, high, unit="speaker", n=10):
    return {
        "low": low,
        "high": high,
        "confidence": 0.95,
        "samples": 200,
        "seed": 1986,
        "unit": unit,
        "n_units": n,
    }


def _cosine(eer, eer_ci, dcf, dcf_ci):
    return {
        "eer": eer,
        "min_dcf@0.01": dcf,
        "tar@far=0.01": 0.1,
        "n_target": 100,
        "n_nontarget": 100,
        "intervals": {"eer": _interval(*eer_ci), "min_dcf@0.01": _interval(*dcf_ci)},
    }


def _paired(d_eer, eer_ci, d_dcf, dcf_ci):
    return {
        "cosine": {
            "eer": {"difference": d_eer, "interval": _interval(*eer_ci)},
            "min_dcf@0.01": {"difference": d_dcf, "interval": _interval(*dcf_ci)},
        }
    }


def test_summary_shows_intervals_and_claims_only_what_they_support(tmp_path):
    """The summary from hand-made metrics files: every EER, minDCF and SI-SDRi with its
    interval; "beats" where the paired interval excludes 0, "matches" where it contains 0."""
    sys.path.insert(0, str(ROOT / "recipes" / "demo"))
    from summary import write_summary

    from sepid.data.manifest import write_csv

    seed = 7
    speaker = {
        "models": {
            "pretrained": {"verification": {"cosine": _cosine(0.27, (0.2, 0.34), 0.9, (0.8, 1.0))}},
            "finetuned": {"verification": {"cosine": _cosine(0.06, (0.03, 0.1), 0.5, (0.3, 0.7))}},
            "fbank": {"verification": {"cosine": _cosine(0.065, (0.03, 0.11), 0.6, (0.4, 0.8))}},
        },
        "comparisons": {
            "verification": {
                # stored as pretrained - finetuned: the summary turns it round
                "pretrained - finetuned": _paired(0.21, (0.12, 0.3), 0.4, (0.2, 0.6)),
                "finetuned - fbank": _paired(-0.005, (-0.062, 0.063), -0.1, (-0.3, 0.1)),
                "pretrained - fbank": _paired(0.2, (0.1, 0.3), 0.3, (0.1, 0.5)),
            }
        },
    }
    rng = np.random.default_rng(0)
    joint_eval = tmp_path / "joint" / str(seed) / "eval"
    base = rng.normal(0.2, 1.0, 40)
    systems = {"untrained tiny": base, "joint model": base + 1.0 + rng.normal(0, 0.1, 40)}
    joint = {"systems": {}}
    for name, values in systems.items():
        rows = [{"ID": f"m{i:02d}", "si_sdri": v} for i, v in enumerate(values)]
        write_csv(joint_eval / name.replace(" ", "_") / "per_mixture.csv", rows, ["ID", "si_sdri"])
        stats = {"mean": float(values.mean()), "interval": _interval(0.0, 1.5, "item", 40)}
        joint["systems"][name] = {
            "separation": {"si_sdri": stats},
            "mixture": {"si_sdri": {"mean": 0.0, "interval": None}},
            "speaker_identification": {},
        }
    files = {
        tmp_path / "speaker" / str(seed) / "eval" / "metrics.json": speaker,
        tmp_path / "separation" / str(seed) / "eval" / "metrics.json": {
            "separation": joint["systems"]["untrained tiny"]["separation"]
        },
        joint_eval / "metrics.json": joint,
        tmp_path / "use" / "use.json": {
            "verification": {},
            "separated_enrolled": [],
            "mixture": "m.wav",
            "true_speakers": [],
        },
    }
    for path, content in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content))
    markdown = write_summary(tmp_path, seed, {"speaker-train": 1.0}, 1.0)
    summary = json.loads((tmp_path / "summary.json").read_text())

    assert "| trained on 251 speakers | 6.00 [3.00, 10.00] | 0.500 [0.300, 0.700] |" in markdown
    assert "95 % bootstrap confidence interval" in markdown and "10 speakers" in markdown
    fbank = summary["speaker_comparisons"][
        "trained on 251 speakers vs fbank mean+std baseline (no training)"
    ]
    assert fbank["EER"] == {"difference": -0.5, "interval": [-6.2, 6.3], "verdict": "matches"}
    assert "trained on 251 speakers matches fbank mean+std baseline (no training): EER" in markdown
    assert "beats fbank" not in markdown
    untrained = summary["speaker_comparisons"]["trained on 251 speakers vs untrained tiny WavLM"]
    assert untrained["EER"]["interval"] == [-30.0, -12.0] and untrained["EER"]["verdict"] == "beats"
    assert "trained on 251 speakers beats untrained tiny WavLM: EER (points) difference -21.00" in (
        markdown
    )
    # the joint model's SI-SDRi: about +1 dB on every mixture, paired over the 40 mixtures
    joint_vs = summary["separation_comparison"]["SI-SDRi (dB)"]
    assert joint_vs["verdict"] == "beats" and joint_vs["n_mixtures"] == 40
    assert joint_vs["interval"][0] > 0.9 and joint_vs["interval"][1] < 1.1
    assert "the jointly trained separator beats the untrained one: SI-SDRi" in markdown
    row = summary["separation"]["jointly trained separator"]
    assert row["si_sdri_ci"] == [0.0, 1.5]

"""Shared fixtures: one tiny speaker experiment, trained once per test session by the real
speaker recipe, for the tests that need a trained speaker model (joint, separation, YAMLs)."""

import re
from pathlib import Path

import pytest

from tests.helpers import run_script


@pytest.fixture(scope="session")
def speaker_experiment(tmp_path_factory):
    """Output folder of a 1-epoch demo speaker training (tiny random WavLM)."""
    out = tmp_path_factory.mktemp("speaker-experiment")
    run_script(
        [
            "recipes/speaker/train.py",
            "hparams/demo/wavlm-lora-arcface.yaml",
            f"--output_folder={out}",
            "--number_of_epochs=1",
        ]
    )
    return out


@pytest.fixture(scope="session")
def exported_speaker(speaker_experiment, tmp_path_factory):
    """The session's speaker experiment exported by pretrained_interfaces/export.py (merged LoRA,
    no threshold: not evaluated), as the separation and joint recipes take it."""
    from pretrained_interfaces.export import export_speaker

    return export_speaker(
        run_folder=speaker_experiment, out=tmp_path_factory.mktemp("exported") / "speaker"
    )


@pytest.fixture(scope="session")
def joint_run(speaker_experiment, exported_speaker, tmp_path_factory):
    """One epoch of the demo joint recipe on a few dynamic mixtures, its speaker branch from the
    exported speaker model; returns ``(output folder, log)``."""
    out = tmp_path_factory.mktemp("joint-run") / "run"
    log = run_script(
        [
            "recipes/joint/train.py",
            "hparams/demo/sepformer-wavlm-speaker.yaml",
            f"--output_folder={out}",
            f"--speaker_source={exported_speaker}",
            f"--speaker_manifest={Path(speaker_experiment) / 'prep' / 'train.csv'}",
            "--number_of_epochs=1",
            "--n_train_mixtures=4",
            "--n_valid_mixtures=2",
        ]
    )
    return out, log


@pytest.fixture(scope="session")
def exported_joint(joint_run):
    """The joint run exported by the command its training logged."""
    _, log = joint_run
    command = re.search(r"(pretrained_interfaces/export\.py \S+ --out \S+)", log).group(1)
    run_script(command.split())
    return Path(command.split()[-1])

"""Shared fixtures: one tiny speaker experiment, trained once per test session by the real
speaker recipe, for the tests that need a trained speaker model (joint, separation, YAMLs)."""

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

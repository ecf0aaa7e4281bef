"""Checks every recipe script runs before any work: override types against the YAML's defaults
(parsed as hyperpyyaml parses them), the ranges of the values that have one, the output folder
guard."""

import re

import pytest

from sepid.training.experiment import (
    check_override_types,
    check_override_values,
    ensure_writable,
    plain_values,
)

YAML_TEXT = """
seed: 3
lr: 0.001
batch_size: 8
augment: True
name: demo
output_folder: !ref results/<name>/<seed>
model: !new:torch.nn.Linear
    in_features: 2
    out_features: 2
"""


@pytest.fixture
def hparams_file(tmp_path):
    path = tmp_path / "hp.yaml"
    path.write_text(YAML_TEXT)
    return path


def test_plain_values_resolve_refs_and_build_nothing(hparams_file):
    values = plain_values(hparams_file, "seed: 7")
    assert values["output_folder"] == "results/demo/7"
    assert values["model"] is None  # a tag is not built while inspecting


@pytest.mark.parametrize(
    "overrides",
    ["lr: 1e-3", "lr: 5", "batch_size: 16", "augment: False", "name: 12", "unknown_key: x", ""],
)
def test_overrides_of_a_compatible_type_pass(hparams_file, overrides):
    check_override_types(hparams_file, overrides)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ("batch_size: abc", "--batch_size='abc': expected a number"),
        ("lr: fast", "--lr='fast': expected a number"),
        ("augment: 1", "--augment=1: expected True or False"),
        ("batch_size: True", "--batch_size=True: expected a number"),
    ],
)
def test_overrides_of_the_wrong_type_are_named(hparams_file, overrides, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        check_override_types(hparams_file, overrides)


def test_an_unwritable_folder_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(PermissionError, match=f"Cannot write to the output folder {blocker}/out"):
        ensure_writable(blocker / "out")
    assert ensure_writable(tmp_path / "new" / "out").is_dir()


def test_a_float_default_written_with_an_exponent_is_a_number(tmp_path):
    path = tmp_path / "hp.yaml"
    path.write_text("lr: 5e-4\noutput_folder: out\n")
    assert plain_values(path)["lr"] == 5e-4
    with pytest.raises(ValueError, match="expected a number"):
        check_override_types(path, "lr: fast")


def test_a_placeholder_default_and_speaker_selections_pass(tmp_path):
    path = tmp_path / "hp.yaml"
    path.write_text(
        "data_folder: !PLACEHOLDER\nprep: !ref <data_folder>/prep\nspeakers: 100\nbatch_size: 8\n"
    )
    check_override_types(path, "data_folder: x\nspeakers: all\nbatch_size: 4")
    check_override_types(path, "speakers: [a, b]")
    with pytest.raises(ValueError, match="expected a number"):
        check_override_types(path, "data_folder: x\nbatch_size: abc")


def test_a_placeholder_yaml_checks_its_overrides(tmp_path):
    """The real YAMLs have a !PLACEHOLDER that the overrides fill (--data_folder)."""
    path = tmp_path / "hp.yaml"
    path.write_text("data_folder: !PLACEHOLDER\nbatch_size: 8\noutput_folder: out\n")
    check_override_types(path, "data_folder: /data\nbatch_size: 4")
    with pytest.raises(ValueError, match="--batch_size='x'"):
        check_override_types(path, "data_folder: /data\nbatch_size: x")
    assert plain_values(path, "data_folder: /data")["output_folder"] == "out"


RANGE_YAML = """
number_of_epochs: 10
batch_size: 8
segment_seconds: 3.0
total_steps: null
warmup_steps: null
epochs_copy: !ref <number_of_epochs>
lora_targets: [q_proj, v_proj]
"""


@pytest.fixture
def range_file(tmp_path):
    path = tmp_path / "hp.yaml"
    path.write_text(RANGE_YAML)
    return path


@pytest.mark.parametrize(
    "overrides",
    ["", "total_steps: 100", "total_steps: null", "warmup_steps: 0", "segment_seconds: 0.5"],
)
def test_values_in_range_pass(range_file, overrides):
    check_override_values(range_file, overrides)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        # a null default has no type to compare with: the range names the key
        ("total_steps: abc", "--total_steps='abc': expected a whole number above 0 (or null)"),
        ("total_steps: 0", "--total_steps=0: expected a whole number above 0"),
        # the key the user gave, not one derived from it later (total_steps = epochs x steps)
        ("number_of_epochs: -1", "--number_of_epochs=-1: expected a whole number above 0"),
        ("segment_seconds: 0", "--segment_seconds=0: expected a number above 0"),
        ("batch_size: 2.5", "--batch_size=2.5: expected a whole number above 0"),
        ("warmup_steps: -3", "--warmup_steps=-3: expected a whole number at least 0"),
    ],
)
def test_values_out_of_range_name_their_key(range_file, overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        check_override_values(range_file, overrides)


def test_a_value_out_of_range_in_the_yaml_itself_is_named(tmp_path):
    path = tmp_path / "hp.yaml"
    path.write_text("number_of_epochs: 0\n")
    with pytest.raises(ValueError, match=r"number_of_epochs: 0 \(in .*hp.yaml"):
        check_override_values(path, "")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            "lora_targets: q_proj",
            "--lora_targets='q_proj': expected a list, e.g. --lora_targets=[q_proj]",
        ),
        ("lora_targets: 3", "--lora_targets=3: expected a list"),
    ],
)
def test_a_scalar_where_a_list_is_expected_is_refused_not_split(range_file, overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        check_override_types(range_file, overrides)


def test_a_list_where_a_list_is_expected_passes(range_file):
    check_override_types(range_file, "lora_targets: [q_proj]")

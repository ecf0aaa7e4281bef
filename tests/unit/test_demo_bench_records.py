"""The demo benchmarks' selection rule (tests/benchmarks/demo_records.py): a setting runs on the
test speakers only with a committed dev record of it (or says it had none), and every record
names its split and setting. Only the refusal is exercised: no training is started."""

import json

import pytest

from tests.benchmarks import bench_demo_joint, bench_demo_speaker
from tests.benchmarks.demo_records import (
    committed_records,
    dev_seeds,
    gate_test_split,
    setting_of,
)

SPEAKER = ("hparams/demo/speaker-overrides.yaml", "hparams/demo/tiny-wavlm.yaml")


@pytest.mark.parametrize("bench", [bench_demo_speaker, bench_demo_joint])
def test_test_split_without_a_dev_record_is_refused_before_any_work(bench, tmp_path):
    work = tmp_path / "work"
    with pytest.raises(SystemExit, match="--split test refused: setting [0-9a-f]{12} has no dev"):
        bench.main(["--split", "test", "--seeds", "1", f"--work={work}", "--", "--lr=0.123"])
    assert not work.exists()  # refused before the tiny model, training or mixtures


def test_gate_uses_dev_records_of_the_exact_setting():
    setting, sid = setting_of(*SPEAKER[:1], ["--lr=0.001"], SPEAKER[1], n_train_speakers=None)
    other = setting_of(*SPEAKER[:1], ["--lr=0.002"], SPEAKER[1], n_train_speakers=None)[1]
    records = [
        {"split": "dev", "seed": 2, "setting_id": sid},
        {"split": "dev", "seed": 1, "setting_id": sid},
        {"split": "test", "seed": 3, "setting_id": sid},  # a test record selects nothing
        {"split": "dev", "seed": 1, "setting_id": other},
        {"split": "dev", "seed": 9, "tag": "final"},  # an old record without a setting
    ]
    assert dev_seeds(records, sid) == [1, 2]
    assert gate_test_split(records, sid, "x.jsonl") == {
        "dev_records": [1, 2],
        "selected_on_dev": True,
    }
    with pytest.raises(SystemExit, match="no dev record in the committed x.jsonl"):
        gate_test_split(records[2:], sid, "x.jsonl")
    assert gate_test_split([], sid, "x.jsonl", no_dev_record=True) == {
        "dev_records": [],
        "selected_on_dev": False,
    }
    assert setting["values"]["lr"] == "0.001" and setting["tiny_config"]


def test_setting_ignores_locations_but_not_what_is_trained():
    base = setting_of(*SPEAKER[:1], [], SPEAKER[1])
    moved = setting_of(
        *SPEAKER[:1], ["--output_folder=/elsewhere", "--wavlm_source=/x/tiny"], SPEAKER[1]
    )
    assert moved == base
    assert setting_of(*SPEAKER[:1], ["--number_of_epochs=3"], SPEAKER[1])[1] != base[1]
    assert setting_of(*SPEAKER[:1], [], SPEAKER[1], n_train_speakers=50)[1] != base[1]
    joint = ("hparams/demo/joint-overrides.yaml", "hparams/demo/tiny-sepformer.yaml")
    chained = setting_of(joint[0], ["--speaker_source=/some/export"], joint[1])
    fresh = setting_of(joint[0], ["--speaker_source=null"], joint[1])
    assert chained == setting_of(joint[0], [], joint[1])  # where the export is: no matter
    assert fresh[1] != chained[1]  # a fresh speaker branch is another chain
    json.dumps(base[0])  # a record carries it as JSON


def test_committed_records_read_the_committed_file():
    records = committed_records("tests/benchmarks/results/demo_speaker.jsonl")
    assert records and all("split" in r for r in records)
    assert committed_records("tests/benchmarks/results/no_such_file.jsonl") == []

#!/usr/bin/env python3
"""Chooses and checks the offline demo's joint settings without looking at its test speakers.

The chain is the demo's: the tiny random SepFormer (``python -m sepid.tiny sepformer`` with
``hparams/demo/tiny-sepformer.yaml``), joint training by the real recipe
(``recipes/joint/train.py hparams/sepformer-wavlm-speaker.yaml`` with
``hparams/demo/joint-overrides.yaml``) from the demo's trained speaker model, and the joint
evaluation (``recipes/joint/evaluate.py``, same overrides), which scores the unprocessed mixture,
the untrained tiny separator (``pretrained separator``) and the jointly trained model on the same
written mixtures, and identifies the speaker of each separated output (enrolment centroids).

``--split dev`` (for choosing): the joint model trained on dynamic mixtures of 211 of the 251
train-clean-100 speakers and scored on mixtures of the 40 others' whole utterances (5.5 s; the
dev speakers of ``bench_demo_speaker.py``); the test-other speakers are not read. The speaker
branch starts from the demo's speaker model (trained on all 251: a dev speaker model of its own
would double the CPU time of every choice), so the dev speakers were never in joint training but
were in speaker training: the separation numbers do not depend on that (the separator is scored
alone), the speaker identification ones do, and also enrol pieces of the very utterances the
mixtures are made of; read them as optimistic.
``--split test`` (for reporting, once per seed, after choosing): the demo's own chain, from its
speaker model (``results/demo/speaker/1986``, exported to ``results/demo/speaker-export``) on
mixtures of the 10 unseen test-other speakers' held-out identification-test utterances.

One JSON line per run (also appended to ``<work>/results.jsonl``): SI-SDRi, SDRi, PESQ, STOI of
each system, speaker top-1 on separated outputs, wall and CPU (user + sys of the child
processes) seconds of training and evaluation::

    python tests/benchmarks/bench_demo_joint.py --split dev --seeds 1 --tag lr1e-3 -- --lr=0.001
    python tests/benchmarks/bench_demo_joint.py --split test --seeds 1986 1 2 --tag final

Each record carries its ``split``, ``setting`` and ``setting_id`` and is appended to
``tests/benchmarks/results/demo_joint.jsonl`` (``--results``) and ``<work>/results.jsonl``.
``--split test`` is refused unless the committed results file holds a dev record of the same
setting (``tests/benchmarks/demo_records.py``); ``--no_dev_record`` runs it anyway and the
record says it was not selected on dev.
"""

import argparse
import csv
import json
import sys
from pathlib import Path

import soundfile as sf
from ruamel import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sepid.training.overrides import override_args, read_overrides  # noqa: E402
from tests.benchmarks.bench_common import run_timed as run  # noqa: E402
from tests.benchmarks.bench_demo_speaker import make_dev_split  # noqa: E402
from tests.benchmarks.demo_records import (  # noqa: E402
    append_record,
    committed_records,
    gate_test_split,
    setting_of,
)

CORPUS = "tests/samples/librispeech-mini/train-clean-100"
TEST_CORPUS = "tests/samples/librispeech-mini/test-other"
YAML = "hparams/sepformer-wavlm-speaker.yaml"
OVERRIDES = "hparams/demo/joint-overrides.yaml"
TINY_CONFIG = "hparams/demo/tiny-sepformer.yaml"
RESULTS = "tests/benchmarks/results/demo_joint.jsonl"
# the demo's own test mixtures: as many as hparams/demo/mixtures.yaml makes
TEST_MIXTURES = int(read_overrides(ROOT / "hparams/demo/mixtures.yaml")["n_test"])
# hparams/demo/tiny-sepformer.yaml's keys -> the joint YAML's separator sizes
SIZE_KEYS = {
    "channels": "N_encoder_out",
    "ffn": "transformer_ffn",
    "layers": "transformer_layers",
    "nhead": "transformer_heads",
    "blocks": "dual_path_layers",
    "chunk": "chunk_size",
}


def dev_chain(work, experiment, export, n_mixtures):
    """Joint training on the 211 dev-train speakers, mixtures of the 40 dev speakers' whole
    utterances (enrolment: the first two of the three pieces ``bench_demo_speaker.make_dev_split``
    cuts each into); returns the joint recipe's options for them."""
    speakers_file, dev_folder = make_dev_split(work / "split")
    dev_speakers = sorted(p.name for p in dev_folder.iterdir())
    manifest, enrol = work / "dev-utterances.csv", work / "dev-enrol.csv"
    with open(manifest, "w", newline="") as f, open(enrol, "w", newline="") as g:
        utterances, pieces = csv.writer(f), csv.writer(g)
        utterances.writerow(["ID", "duration", "wav", "spk_id"])
        pieces.writerow(["ID", "duration", "wav", "spk_id"])
        for path in sorted((ROOT / CORPUS).glob("*.flac")):
            spk = path.name.split("-", 1)[0]
            if spk in dev_speakers:
                duration = round(sf.info(path).duration, 6)
                utterances.writerow([path.stem, duration, f"$data_root/{path.name}", spk])
        for path in sorted(dev_folder.glob("*/*-p[01].flac")):
            duration = round(sf.info(path).duration, 6)
            rel = path.relative_to(dev_folder)
            pieces.writerow([path.stem, duration, f"$data_root/{rel}", path.parent.name])
    mixtures = work / f"mixtures-dev-{n_mixtures}"
    make_mixtures(manifest, ROOT / CORPUS, mixtures, n_mixtures, len(dev_speakers))
    return [
        f"--speaker_source={export}",
        f"--speaker_manifest={experiment / 'prep' / 'train.csv'}",
        f"--valid_speaker_manifest={experiment / 'prep' / 'valid.csv'}",
        f"--train_speakers={speakers_file}",
        f"--mixture_folder={mixtures}",
        f"--enrol_csv={enrol}",
        f"--enrol_data_folder={dev_folder}",
    ]


def make_mixtures(manifest, data_folder, save_folder, n_mixtures, n_speakers):
    run(
        [
            "data_prep/make_mixtures.py",
            f"--manifest={manifest}",
            f"--data_folder={data_folder}",
            f"--save_folder={save_folder}",
            "--n_train=0",
            "--n_valid=0",
            f"--n_test={n_mixtures}",
            "--train_speakers=0",
            "--valid_speakers=0",
            f"--test_speakers={n_speakers}",
            "--sample_rate=8000",
        ]
    )


def test_chain(work, experiment, export, n_mixtures):
    """The demo's chain: mixtures of the test-other speakers' identification-test utterances
    (the speaker evaluation's prep), enrolment on their identification-enrolment ones."""
    for needed in (experiment / "prep_eval" / "iden_test.csv", export / "hyperparams.yaml"):
        if not needed.is_file():
            raise FileNotFoundError(
                f"{needed} is missing: run the demo's speaker stage (training, evaluation) and "
                "its export first (hparams/demo/speaker-overrides.yaml)."
            )
    mixtures = work / f"mixtures-test-{n_mixtures}"
    make_mixtures(
        experiment / "prep_eval" / "iden_test.csv", ROOT / TEST_CORPUS, mixtures, n_mixtures, 10
    )
    return [
        f"--speaker_source={export}",
        f"--speaker_manifest={experiment / 'prep' / 'train.csv'}",
        f"--valid_speaker_manifest={experiment / 'prep' / 'valid.csv'}",
        f"--mixture_folder={mixtures}",
        f"--enrol_csv={experiment / 'prep_eval' / 'iden_enrol.csv'}",
        f"--enrol_data_folder={ROOT / TEST_CORPUS}",
    ]


def summary(metrics_file):
    """SI-SDRi, SDRi, PESQ, STOI of the mixture, the untrained and the trained separator, and
    speaker top-1 on their outputs, from the joint evaluation's metrics.json."""
    report = json.loads(Path(metrics_file).read_text())["systems"]
    baseline, joint = report  # the untrained tiny separator (separator_tag), the joint model
    rows = {}
    for name, system, part in (
        ("mixture", baseline, "mixture"),
        ("untrained", baseline, "separation"),
        ("joint", joint, "separation"),
    ):
        values = report[system][part]  # metric -> {mean, median, std, n, n_missing}
        rows[name] = {
            k: None if values.get(k, {}).get("mean") is None else round(values[k]["mean"], 3)
            for k in ("si_sdri", "sdri", "si_sdr", "pesq", "stoi")
        }
        rows[name]["si_sdri_median"] = round(values["si_sdri"]["median"], 3)
        interval = values["si_sdri"].get("interval")
        rows[name]["si_sdri_ci"] = (
            None if interval is None else [round(interval[k], 3) for k in ("low", "high")]
        )
    speaker = {}
    for system, r in report.items():
        for model, conditions in r["speaker_identification"].items():
            for condition, methods in conditions.items():
                for method, value in methods.items():
                    if value["accuracy"] is not None:
                        key = f"{system}: {model}: {condition}: {method}"
                        speaker[key] = round(value["accuracy"] * 100, 1)
    rows["speaker_identification"] = speaker
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", choices=["dev", "test"], default="dev")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1986])
    parser.add_argument("--work", default="results/bench-demo-joint")
    parser.add_argument("--tag", default="default", help="name of this setting's run folders")
    parser.add_argument("--tiny_config", default=TINY_CONFIG)
    parser.add_argument(
        "--n_mixtures", type=int, default=None, help=f"dev 80, test {TEST_MIXTURES} (the demo's)"
    )
    parser.add_argument("--no_eval", action="store_true", help="train only")
    parser.add_argument(
        "--speaker_experiment",
        default="results/demo/speaker/1986",
        help="the demo speaker stage's output folder (its prep manifests)",
    )
    parser.add_argument("--speaker_export", default="results/demo/speaker-export")
    parser.add_argument("--results", default=RESULTS, help="the committed results file")
    parser.add_argument(
        "--no_dev_record",
        action="store_true",
        help="run --split test without a committed dev record of this setting (recorded)",
    )
    parser.add_argument("overrides", nargs="*", help="--key=value (after --)")
    args = parser.parse_args(argv)
    setting, setting_id = setting_of(OVERRIDES, args.overrides, args.tiny_config)
    selection = {}
    if args.split == "test":  # before any work: a refused run costs nothing
        selection = gate_test_split(
            committed_records(args.results),
            setting_id,
            args.results,
            args.no_dev_record,
            command="python tests/benchmarks/bench_demo_joint.py",
        )
    work = ROOT / args.work
    work.mkdir(parents=True, exist_ok=True)
    tiny = work / "models" / Path(args.tiny_config).stem
    run(["-m", "sepid.tiny", "sepformer", "--config", args.tiny_config, "--out", str(tiny)])
    sizes = yaml.YAML(typ="safe", pure=True).load((ROOT / args.tiny_config).read_text())
    extra = [f"--separator_source={tiny}", *(f"--{SIZE_KEYS[k]}={v}" for k, v in sizes.items())]
    experiment, export = ROOT / args.speaker_experiment, ROOT / args.speaker_export
    if args.split == "dev":
        extra += dev_chain(work, experiment, export, args.n_mixtures or 80)
    else:
        extra += test_chain(work, experiment, export, args.n_mixtures or TEST_MIXTURES)
    for seed in args.seeds:
        out = work / args.split / args.tag / str(seed)
        ov = override_args(
            OVERRIDES, [*extra, f"--seed={seed}", f"--output_folder={out}", *args.overrides]
        )
        train_wall, train_cpu = run(["recipes/joint/train.py", YAML, *ov])
        result = {
            "split": args.split,
            "tag": args.tag,
            "seed": seed,
            "setting_id": setting_id,
            "setting": setting,
            **selection,
            "n_mixtures": args.n_mixtures or (80 if args.split == "dev" else TEST_MIXTURES),
            "overrides": args.overrides,
            "tiny_config": args.tiny_config,
            "train_wall_s": train_wall,
            "train_cpu_s": train_cpu,
        }
        if not args.no_eval:
            eval_wall, eval_cpu = run(["recipes/joint/evaluate.py", YAML, *ov])
            result.update(eval_wall_s=eval_wall, eval_cpu_s=eval_cpu)
            result.update(summary(out / "eval" / "metrics.json"))
        print(json.dumps(result), flush=True)
        append_record(result, work / "results.jsonl", ROOT / args.results)


if __name__ == "__main__":
    main()

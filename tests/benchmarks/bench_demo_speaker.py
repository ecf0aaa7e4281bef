#!/usr/bin/env python3
"""Chooses and checks the offline demo's speaker settings without looking at its test speakers.

``--split dev`` (for choosing): trains on 211 of the 251 train-clean-100 speakers of the demo
corpus and evaluates on the 40 others (seeded choice), each of whose one 5.5 s utterance is cut
into 3 pieces so that they have target trials; the test-other speakers are not read.
``--split test`` (for reporting, once per seed, after choosing): the demo's own run, training on
all 251 and evaluating on the 10 unseen test-other speakers.

Both run the real recipe (``recipes/speaker/train.py`` and ``evaluate.py`` on
``hparams/wavlm-lora-arcface.yaml`` with ``hparams/demo/speaker-overrides.yaml``), after any extra
``--key=value`` overrides given here, and print one JSON line per run: EER, normalised minDCF
(p=0.01), TAR at FAR 1 % and identification top-1 of the untrained model (``pretrained``: the
tiny random WavLM, mean-pooled), the trained one (``finetuned``) and the fbank baseline, plus the
wall time::

    python tests/benchmarks/bench_demo_speaker.py --split dev --seeds 1 2 3 -- --lr=0.001

Each record carries its ``split``, ``setting`` and ``setting_id`` and is appended to
``tests/benchmarks/results/demo_speaker.jsonl`` (``--results``) and ``<work>/results.jsonl``.
``--split test`` is refused unless the committed results file holds a dev record of the same
setting (``tests/benchmarks/demo_records.py``); ``--no_dev_record`` runs it anyway and the
record says it was not selected on dev.
"""

import argparse
import json
import random
import sys
import time
from pathlib import Path

import soundfile as sf

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sepid.training.overrides import override_args  # noqa: E402
from tests.benchmarks.bench_common import run_timed as run  # noqa: E402
from tests.benchmarks.demo_records import (  # noqa: E402
    append_record,
    committed_records,
    gate_test_split,
    setting_of,
)

CORPUS = ROOT / "tests/samples/librispeech-mini/train-clean-100"
YAML = "hparams/wavlm-lora-arcface.yaml"
OVERRIDES = "hparams/demo/speaker-overrides.yaml"
TINY_CONFIG = "hparams/demo/tiny-wavlm.yaml"
RESULTS = "tests/benchmarks/results/demo_speaker.jsonl"


def make_dev_split(out, n_dev=40, pieces=3, seed=0):
    """Writes ``out/train_speakers.txt`` (the training speakers) and ``out/dev/<spk>/*.flac``
    (each dev speaker's utterance in ``pieces`` equal parts); returns ``(speakers file, dev
    folder)``. Only the training corpus is read."""
    files = sorted(CORPUS.glob("*.flac"))
    speakers = sorted({f.name.split("-", 1)[0] for f in files}, key=int)
    dev = set(random.Random(seed).sample(speakers, n_dev))
    dev_folder = out / "dev"
    for f in files:
        spk = f.name.split("-", 1)[0]
        if spk not in dev:
            continue
        audio, rate = sf.read(f, dtype="int16")
        step = len(audio) // pieces
        (dev_folder / spk).mkdir(parents=True, exist_ok=True)
        for k in range(pieces):
            piece = audio[k * step : (k + 1) * step]
            sf.write(dev_folder / spk / f"{f.stem}-p{k}.flac", piece, rate, subtype="PCM_16")
    speakers_file = out / "train_speakers.txt"
    speakers_file.write_text("\n".join(s for s in speakers if s not in dev) + "\n")
    return speakers_file, dev_folder


def summary(metrics_file):
    """``{model: {eer, min_dcf, tar_at_far_1pct, top1}}`` of an evaluation's metrics.json."""
    report = json.loads(Path(metrics_file).read_text())["models"]
    rows = {}
    for model, sets in report.items():
        cosine = sets["verification"]["cosine"]
        iden = sets.get("identification_eval_speakers", {}).get("embedding", {})
        intervals = cosine.get("intervals", {})
        rows[model] = {
            "eer": round(cosine["eer"] * 100, 2),
            "eer_ci": [round(100 * intervals["eer"][k], 2) for k in ("low", "high")]
            if "eer" in intervals
            else None,
            "min_dcf": round(cosine["min_dcf@0.01"], 3),
            "min_dcf_ci": [round(intervals["min_dcf@0.01"][k], 3) for k in ("low", "high")]
            if "min_dcf@0.01" in intervals
            else None,
            "tar_at_far_1pct": round(cosine["tar@far=0.01"] * 100, 1),
            "top1": None if "top1" not in iden else round(iden["top1"] * 100, 1),
            "n_target": cosine.get("n_target"),
        }
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", choices=["dev", "test"], default="dev")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1986])
    parser.add_argument("--work", default="results/bench-demo-speaker")
    parser.add_argument("--tag", default="default", help="name of this setting's run folders")
    parser.add_argument("--tiny_config", default=TINY_CONFIG)
    parser.add_argument(
        "--n_train_speakers", type=int, default=None, help="train on the first N speakers only"
    )
    parser.add_argument("--results", default=RESULTS, help="the committed results file")
    parser.add_argument(
        "--no_dev_record",
        action="store_true",
        help="run --split test without a committed dev record of this setting (recorded)",
    )
    parser.add_argument("overrides", nargs="*", help="--key=value (after --)")
    args = parser.parse_args(argv)
    setting, setting_id = setting_of(
        OVERRIDES, args.overrides, args.tiny_config, n_train_speakers=args.n_train_speakers
    )
    selection = {}
    if args.split == "test":  # before any work: a refused run costs nothing
        selection = gate_test_split(
            committed_records(args.results),
            setting_id,
            args.results,
            args.no_dev_record,
            command="python tests/benchmarks/bench_demo_speaker.py",
        )
    work = ROOT / args.work
    work.mkdir(parents=True, exist_ok=True)
    tiny = work / "models" / Path(args.tiny_config).stem
    run(["-m", "sepid.tiny", "wavlm", "--config", args.tiny_config, "--out", str(tiny)])
    extra = [f"--wavlm_source={tiny}"]
    if args.split == "dev":
        speakers_file, dev_folder = make_dev_split(work / "split")
        if args.n_train_speakers is not None:
            subset = work / "split" / f"train_speakers_{args.n_train_speakers}.txt"
            lines = speakers_file.read_text().split()[: args.n_train_speakers]
            subset.write_text("\n".join(lines) + "\n")
            speakers_file = subset
        extra += [
            f"--speakers={speakers_file}",
            f"--eval_data_folder={dev_folder}",
            "--n_iden_enrol=2",
            "--n_iden_test=1",
        ]
    elif args.n_train_speakers is not None:
        extra.append(f"--speakers={args.n_train_speakers}")
    for seed in args.seeds:
        out = work / args.split / args.tag / str(seed)
        ov = override_args(
            OVERRIDES, [*extra, f"--seed={seed}", f"--output_folder={out}", *args.overrides]
        )
        start = time.time()
        run(["recipes/speaker/train.py", YAML, *ov])
        trained = time.time() - start
        run(["recipes/speaker/evaluate.py", YAML, *ov])
        result = {
            "split": args.split,
            "tag": args.tag,
            "seed": seed,
            "setting_id": setting_id,
            "setting": setting,
            **selection,
            "overrides": args.overrides,
            "tiny_config": args.tiny_config,
            "train_s": round(trained),
            "total_s": round(time.time() - start),
            **summary(out / "eval" / "metrics.json"),
        }
        print(json.dumps(result), flush=True)
        append_record(result, work / "results.jsonl", ROOT / args.results)


if __name__ == "__main__":
    main()

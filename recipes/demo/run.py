#!/usr/bin/env python3
"""The offline demo: every recipe of this collection, run end to end as its user runs it, on the
LibriSpeech sample shipped in ``tests/samples`` with tiny randomly initialised models::

    python recipes/demo/run.py            # results/demo/summary.md at the end

Stages, in order (each the real script with the real ``hparams/*.yaml`` and the short list of
differences in ``hparams/demo/*-overrides.yaml``):

 1. ``tiny-wavlm``       build and save the tiny random WavLM (``python -m sepid.tiny``)
 2. ``speaker-train``    ``recipes/speaker/train.py`` on the 251 train-clean-100 speakers
 3. ``speaker-eval``     ``recipes/speaker/evaluate.py`` on the 10 unseen test-other speakers:
                         the untrained model, the trained one and the fbank baseline
 4. ``speaker-export``   ``pretrained_interfaces/export.py`` (a Hub-ready folder)
 5. ``mixtures``         ``data_prep/make_mixtures.py``: test mixtures of the unseen speakers
 6. ``tiny-sepformer``   build and save the tiny random SepFormer
 7. ``separation-eval``  ``recipes/separation/evaluate.py``: the untrained tiny separator, each
                         output identified by the exported speaker model
 8. ``joint-train``      ``recipes/joint/train.py``: separator + speaker branch trained together
 9. ``joint-eval``       ``recipes/joint/evaluate.py``: untrained vs jointly trained
10. ``joint-export``     ``pretrained_interfaces/export.py`` of the joint model
11. ``use-exports``      ``recipes/demo/use_exports.py``: both exports loaded with
                         ``foreign_class`` as a user loads them; two files verified, one
                         mixture separated and its speakers named

then ``summary.md`` / ``summary.json`` in the output folder: the headline numbers of each
evaluation, each with the ``metrics.json`` it was read from.

A rerun skips the stages that finished with the same command (a stamp per stage in
``<output folder>/stages/``, written after the stage succeeded; any stage that runs makes every
later stage run again). A stage that was interrupted redoes its work through its own logic:
training resumes from its last checkpoint, data preparation and mixtures keep what they
completed. A failing stage stops the demo with its name and the command that reruns it alone.

Temporary files, caches and matplotlib's font cache go to ``<output folder>/tmp`` and
``<output folder>/cache``: the demo writes nothing outside the repository
(``tests/recipes/test_demo_driver.py`` checks every file it opens).
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from summary import write_summary  # noqa: E402  (recipes/demo/summary.py)

from sepid.data.manifest import write_atomic  # noqa: E402
from sepid.training.overrides import override_args, read_overrides  # noqa: E402

DEMO = "hparams/demo"
SAMPLES = "tests/samples/librispeech-mini"


@dataclass
class Stage:
    name: str
    args: list  # after `python`
    what: str
    env: dict = field(default_factory=dict)

    def command(self):
        return [sys.executable, *map(str, self.args)]

    def shell(self):
        return " ".join(shlex.quote(a) for a in ["python", *map(str, self.args)])

    def key(self):
        """What a finished stage is recognised by: its command, without ``--overwrite`` (which
        changes what a stage may replace, not what it makes)."""
        return " ".join(a for a in shlex.split(self.shell()) if a != "--overwrite")


def _with(file, extra, more):
    """Overrides of ``file`` with the driver's paths, then the user's ``--stage_overrides``."""
    return override_args(file, [*extra, *more])


def stages(out, seed, extra, overwrite=False):
    """The demo's stages for output folder ``out`` (relative to the repository root when inside
    it), seed ``seed`` and extra overrides ``extra`` (``{stage prefix: ["--k=v", ...]}``);
    ``overwrite`` lets the mixtures stage replace mixtures made with other options."""
    models = out / "models"
    speaker = out / "speaker" / str(seed)
    mixtures = out / "mixtures"
    separation = out / "separation" / str(seed)
    joint = out / "joint" / str(seed)
    spk_args = _with(
        f"{DEMO}/speaker-overrides.yaml",
        [f"--seed={seed}", f"--output_folder={speaker}", f"--wavlm_source={models}/tiny-wavlm"],
        extra.get("speaker", []),
    )
    sep_args = _with(
        f"{DEMO}/separation-overrides.yaml",
        [
            f"--seed={seed}",
            f"--output_folder={separation}",
            f"--data_folder={mixtures}",
            f"--separator_source={models}/tiny-sepformer",
            f"--speaker_source={out}/speaker-export",
            f"--enrol_csv={speaker}/prep_eval/iden_enrol.csv",
        ],
        extra.get("separation", []),
    )
    joint_args = _with(
        f"{DEMO}/joint-overrides.yaml",
        [
            f"--seed={seed}",
            f"--output_folder={joint}",
            f"--separator_source={models}/tiny-sepformer",
            f"--speaker_source={out}/speaker-export",
            f"--wavlm_source={models}/tiny-wavlm",
            f"--speaker_manifest={speaker}/prep/train.csv",
            f"--valid_speaker_manifest={speaker}/prep/valid.csv",
            f"--mixture_folder={mixtures}",
            f"--enrol_csv={speaker}/prep_eval/iden_enrol.csv",
        ],
        extra.get("joint", []),
    )
    mix_args = [
        f"--manifest={speaker}/prep_eval/iden_test.csv",
        f"--data_folder={SAMPLES}/test-other",
        f"--save_folder={mixtures}",
        *_mixture_options(extra.get("mixtures", [])),
        *(["--overwrite"] if overwrite else []),
    ]
    return [
        Stage(
            "tiny-wavlm",
            ["-m", "sepid.tiny", "wavlm", "--config", f"{DEMO}/tiny-wavlm.yaml", "--out"]
            + [models / "tiny-wavlm"],
            "build the tiny random WavLM",
        ),
        Stage(
            "speaker-train",
            ["recipes/speaker/train.py", "hparams/wavlm-lora-arcface.yaml", *spk_args],
            "train the speaker model on 251 LibriSpeech speakers",
        ),
        Stage(
            "speaker-eval",
            ["recipes/speaker/evaluate.py", "hparams/wavlm-lora-arcface.yaml", *spk_args],
            "evaluate it on 10 unseen speakers (untrained, trained, fbank baseline)",
        ),
        Stage(
            "speaker-export",
            ["pretrained_interfaces/export.py", speaker, "--out", out / "speaker-export"]
            + ["--overwrite"],
            "export it (Hub-ready folder)",
        ),
        Stage(
            "mixtures",
            ["data_prep/make_mixtures.py", *mix_args],
            "two-speaker test mixtures of the unseen speakers",
        ),
        Stage(
            "tiny-sepformer",
            ["-m", "sepid.tiny", "sepformer", "--config", f"{DEMO}/tiny-sepformer.yaml", "--out"]
            + [models / "tiny-sepformer"],
            "build the tiny random SepFormer",
        ),
        Stage(
            "separation-eval",
            ["recipes/separation/evaluate.py", "hparams/separation-eval.yaml", *sep_args],
            "separate the test mixtures (untrained separator) and identify each output",
        ),
        Stage(
            "joint-train",
            ["recipes/joint/train.py", "hparams/sepformer-wavlm-speaker.yaml", *joint_args],
            "train separator + speaker branch together",
        ),
        Stage(
            "joint-eval",
            ["recipes/joint/evaluate.py", "hparams/sepformer-wavlm-speaker.yaml", *joint_args],
            "evaluate the joint model against the untrained separator",
        ),
        Stage(
            "joint-export",
            [
                "pretrained_interfaces/export.py",
                joint,
                "--out",
                out / "joint-export",
                "--overwrite",
            ],
            "export the joint model",
        ),
        Stage(
            "use-exports",
            ["recipes/demo/use_exports.py", "--speaker", out / "speaker-export", "--joint"]
            + [out / "joint-export", "--mixtures", mixtures, "--out", out / "use"]
            + ["--enrol_csv", f"{speaker}/prep_eval/iden_enrol.csv"]
            + ["--enrol_data_folder", f"{SAMPLES}/test-other"],
            "load both exports with foreign_class, verify two files, separate a mixture",
        ),
    ]


def _mixture_options(extra):
    """make_mixtures.py options of the demo (``hparams/demo/mixtures.yaml``), then ``extra``."""
    options = read_overrides(f"{DEMO}/mixtures.yaml")
    for arg in extra:
        key, value = arg[2:].split("=", 1)
        options[key] = value
    return [f"--{k}={v}" for k, v in options.items()]


def _stamp(stage, stamps):
    return stamps / f"{stage.name}.json"


def _finished(stage, stamps):
    """The stage's stamp (``{key, command, seconds}``) when it finished with this command."""
    path = _stamp(stage, stamps)
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as fin:
        stamp = json.load(fin)
    return stamp if stamp.get("key") == stage.key() else None


def _mark_done(stage, stamps, seconds):
    stamp = {"key": stage.key(), "command": stage.shell(), "seconds": round(seconds, 1)}
    write_atomic(_stamp(stage, stamps), json.dumps(stamp, indent=2))


def _parse_stage_overrides(items):
    """``["speaker:--k=v", ...]`` -> ``{"speaker": ["--k=v"], ...}``."""
    extra = {}
    for item in items:
        prefix, sep, arg = item.partition(":")
        if not sep or prefix not in ("speaker", "mixtures", "separation", "joint"):
            raise SystemExit(
                f"--stage_override {item!r}: expected speaker:--key=value (or mixtures:, "
                "separation:, joint:)"
            )
        extra.setdefault(prefix, []).append(arg)
    return extra


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output_folder", default="results/demo", help="default: results/demo")
    parser.add_argument("--seed", type=int, default=1986)
    parser.add_argument(
        "--stage_override",
        action="append",
        default=[],
        metavar="STAGE:--KEY=VALUE",
        help="an extra override for the speaker, mixtures, separation or joint stages "
        "(repeatable), e.g. speaker:--number_of_epochs=5",
    )
    parser.add_argument("--until", default=None, help="stop after this stage")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="let the mixtures stage replace mixtures made with other options (without it, "
        "make_mixtures.py refuses and lists the differences)",
    )
    args = parser.parse_args(argv)

    os.chdir(ROOT)
    out = Path(args.output_folder)
    out = out.resolve().relative_to(ROOT) if out.resolve().is_relative_to(ROOT) else out.resolve()
    plan = stages(out, args.seed, _parse_stage_overrides(args.stage_override), args.overwrite)
    names = [s.name for s in plan]
    if args.until is not None and args.until not in names:
        raise SystemExit(f"--until {args.until!r}: not a stage; the stages are {', '.join(names)}")

    # Everything the demo writes stays in its output folder: temporary files (torch, tempfile),
    # matplotlib's font cache, Hugging Face, torch hub and pip caches.
    tmp, cache = out / "tmp", out / "cache"
    tmp.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "TMPDIR": str(tmp.resolve()),
        "MPLCONFIGDIR": str((cache / "matplotlib").resolve()),
        "HF_HOME": str((cache / "huggingface").resolve()),
        "TORCH_HOME": str((cache / "torch").resolve()),
        # SpeechBrain records `pip freeze` in each experiment's env.log: pip then reads no
        # system or user configuration and keeps its cache here
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_CACHE_DIR": str((cache / "pip").resolve()),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    stamps = out / "stages"
    timings, rerun = {}, False
    start = time.monotonic()
    for i, stage in enumerate(plan, 1):
        head = f"[{i}/{len(plan)}] {stage.name}: {stage.what}"
        stamp = None if rerun else _finished(stage, stamps)
        if stamp is not None:
            print(f"{head} ... done before, skipped", flush=True)
            timings[stage.name] = stamp["seconds"]
        else:
            rerun = True
            print(f"{head}\n    $ {stage.shell()}", flush=True)
            t0 = time.monotonic()
            proc = subprocess.run(stage.command(), cwd=ROOT, env={**env, **stage.env})
            seconds = time.monotonic() - t0
            if proc.returncode != 0:
                print(
                    f"\nThe demo stopped: stage '{stage.name}' failed (exit {proc.returncode}, "
                    f"after {seconds:.0f} s); its messages are above. Rerun it alone with:\n"
                    f"    {stage.shell()}\n"
                    "or rerun the demo, which skips the stages that finished.",
                    file=sys.stderr,
                )
                return proc.returncode
            _mark_done(stage, stamps, seconds)
            timings[stage.name] = round(seconds, 1)
            print(f"    done in {seconds:.0f} s", flush=True)
        if stage.name == args.until:
            return 0
    summary = write_summary(out, args.seed, timings, round(time.monotonic() - start, 1))
    print(f"\n{summary}\nSummary: {out / 'summary.md'} (and summary.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

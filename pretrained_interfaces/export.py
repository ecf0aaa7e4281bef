#!/usr/bin/env python3
"""Exports a trained speaker model (or joint separation + speaker model) as a Hub-ready
SpeechBrain folder, and publishes it.

From the output folder of ``recipes/speaker/train.py`` (its ``hyperparams.yaml``, the best
checkpoint in ``save/`` by ``error_rate`` and ``save/label_encoder.txt``, plus
``eval/metrics.json`` when ``recipes/speaker/evaluate.py`` ran) it writes::

    hyperparams.yaml     modules + pretrainer (pretrained_interfaces/speaker/hyperparams.yaml,
                         filled in), incl. the verification threshold (EER threshold)
    custom_interface.py  WavLMSpeakerInterface (encode / verify / classify)
    embedder.ckpt        WavLM with LoRA merged in, pooling and projection (default), or only the
                         adapters and head (--adapters; base weights then come from the base model)
    classifier.ckpt      the ArcFace head (identification of the training speakers)
    label_encoder.ckpt   the training speakers
    README.md            model card (Hub metadata, metrics, training, usage, limitations)

From the output folder of ``recipes/joint/train.py`` (recognised by its YAML) it writes the joint
model instead (:func:`export_joint`): ``encoder.ckpt``, ``masknet.ckpt``, ``decoder.ckpt`` (the
SepFormer), ``embedder.ckpt`` (the speaker branch, LoRA merged), ``classifier.ckpt``,
``label_encoder.ckpt``, ``hyperparams.yaml`` (pretrained_interfaces/sepformer_speaker/, with the
run's chunking of long mixtures), ``custom_interface.py`` (``SepformerSpeakerInterface``, the
speaker interface's code and ``sepid/separation/separator.py``'s chunked separation inlined) and the model
card.

The folder is written next to ``--out`` under a temporary name, loaded back and checked against
the checkpoint, then renamed: an interrupted export leaves nothing half-written.

Split by concern: ``runs.py`` reads the run folder, ``folder.py`` writes the interface folder,
``cards.py`` renders the model cards, ``hub.py`` pushes; ``build.py`` puts them together. This file
is the command line, and re-exports their public names.

To run::

    python pretrained_interfaces/export.py results/wavlm-lora-arcface/1986 --out exported/spk
    python pretrained_interfaces/export.py results/wavlm-lora-arcface/1986 --out exported/spk \\
        --push me/wavlm-lora-spk [--private] [--revision v1] [--title T] [--license L]
    python pretrained_interfaces/export.py --push-only exported/spk --repo me/wavlm-lora-spk

``--push`` uploads with ``huggingface_hub`` (token from ``HF_TOKEN`` or ``hf auth login``; the
endpoint from ``HF_ENDPOINT``); the token is never printed or logged. ``--push-only`` pushes an
existing export (again: after a failed push, the same command), its card's usage snippet pointed at
the repo. Each Hub request gives up after ``--timeout`` seconds without an answer.
"""

import argparse
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root, for pretrained_interfaces.*
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pretrained_interfaces.build import (  # noqa: E402
    SELF_CHECK_ATOL,
    ExportSpaceError,
    export_joint,
    export_speaker,
)
from pretrained_interfaces.cards import joint_model_card, model_card  # noqa: E402
from pretrained_interfaces.folder import (  # noqa: E402
    EXPORT_FILES,
    INTERFACE_CLASS,
    INTERFACE_DIR,
    INTERFACE_FILE,
    JOINT_CLASS,
    JOINT_DIR,
    REPOSITORY,
    SEPARATION_ATOL,
    SEPARATOR_FILES,
    check_output_target,
    interface_hparams,
    joint_interface_source,
    speaker_values,
)
from pretrained_interfaces.hub import DEFAULT_TIMEOUT, PublishError, push_folder  # noqa: E402
from pretrained_interfaces.runs import (  # noqa: E402
    base_weights_file,
    eer_threshold,
    is_joint_run,
    load_joint_run,
    load_run,
    read_metrics,
)

__all__ = [
    "EXPORT_FILES",
    "INTERFACE_CLASS",
    "INTERFACE_DIR",
    "INTERFACE_FILE",
    "JOINT_CLASS",
    "JOINT_DIR",
    "REPOSITORY",
    "SELF_CHECK_ATOL",
    "SEPARATION_ATOL",
    "SEPARATOR_FILES",
    "DEFAULT_TIMEOUT",
    "ExportSpaceError",
    "PublishError",
    "base_weights_file",
    "check_output_target",
    "eer_threshold",
    "export_joint",
    "export_speaker",
    "interface_hparams",
    "is_joint_run",
    "joint_interface_source",
    "joint_model_card",
    "load_joint_run",
    "load_run",
    "main",
    "model_card",
    "push_folder",
    "read_metrics",
    "speaker_values",
]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "run_folder",
        nargs="?",
        help="output folder of recipes/speaker/train.py or recipes/joint/train.py",
    )
    parser.add_argument("--out", help="folder to write (must be new or empty)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument(
        "--adapters",
        action="store_true",
        help="ship LoRA adapters + the base model id instead of merged WavLM weights",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        help="verification threshold (default: the speaker model's EER threshold; for a joint "
        "model the speaker source's)",
    )
    parser.add_argument("--min_key", default="error_rate", help="checkpoint metric to minimise")
    parser.add_argument("--title", help="the model card's title (default: the repo id)")
    parser.add_argument(
        "--license", default="apache-2.0", help="the model's licence, a Hub licence id"
    )
    parser.add_argument(
        "--dataset",
        action="append",
        help="a Hub dataset id the model was trained on (repeatable; default: recognised "
        "from the data folders, e.g. openslr/librispeech_asr)",
    )
    parser.add_argument("--push", metavar="USER/REPO", help="upload the folder to this Hub repo")
    parser.add_argument(
        "--push-only",
        dest="push_only",
        metavar="FOLDER",
        help="upload an existing export (with --repo) instead of exporting",
    )
    parser.add_argument("--repo", metavar="USER/REPO", help="the Hub repo of --push-only")
    parser.add_argument("--private", action="store_true", help="create the Hub repo private")
    parser.add_argument("--revision", help="Hub branch to push to (created if needed)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="seconds a Hub request may go unanswered before the push fails (default "
        f"{DEFAULT_TIMEOUT:g})",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    push = dict(private=args.private, revision=args.revision, timeout=args.timeout)
    try:
        if args.push_only:
            if not args.repo or args.run_folder or args.out or args.push:
                raise ValueError(
                    "--push-only FOLDER takes --repo USER/REPO (and --private, --revision, "
                    "--timeout), no run folder, --out or --push."
                )
            print(push_folder(args.push_only, args.repo, **push))
            return 0
        if not args.run_folder or not args.out:
            raise ValueError(
                "pass a training run folder and --out (or --push-only FOLDER --repo USER/REPO)."
            )
        card = dict(title=args.title, license=args.license, datasets=args.dataset)
        if is_joint_run(args.run_folder):
            if args.adapters or args.min_key != "error_rate":
                raise ValueError(
                    "--adapters and --min_key are for speaker models; a joint model exports "
                    "merged, from its best checkpoint by validation SI-SNRi."
                )
            out = export_joint(
                args.run_folder,
                args.out,
                overwrite=args.overwrite,
                repo_id=args.push,
                threshold=args.threshold,
                **card,
            )
        else:
            out = export_speaker(
                args.run_folder,
                args.out,
                adapters=args.adapters,
                overwrite=args.overwrite,
                threshold=args.threshold,
                repo_id=args.push,
                min_key=args.min_key,
                **card,
            )
        print(out)
        if args.push:
            print(push_folder(out, args.push, **push))
    except (FileNotFoundError, FileExistsError, PublishError, ValueError, ExportSpaceError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Writes a two-speaker mixture corpus (mix, s1, s2 + speaker labels) from a speaker manifest.

The command line of :func:`sepid.data.mixture_corpus.make_mixtures` (outputs, reruns and
``--overwrite``: see there; speaker splits, levels and the no-clipping rule:
:mod:`sepid.data.mixtures`). ``--n_<split>`` and ``--<split>_speakers`` give the ``n_mix`` and
``split_speakers`` of each split. No pair of utterances is mixed twice in a split and each
utterance is in at most ``ceil(2 n / U)`` of its ``n`` mixtures; more mixtures than the split's
distinct pairs is an error naming the maximum (``--allow_fewer``: that many, with a warning).

Example (the reference system's protocol on VoxCeleb2's first 100 speakers): training mixtures
of speakers 1-50 from the speaker recipe's training manifest, test mixtures of speakers 51-100
from their held-out identification-test utterances (never trained on by the speaker model)::

    python data_prep/make_mixtures.py --manifest results/prep/train.csv \\
        --data_folder /data/voxceleb2 --save_folder /data/mix_train \\
        --n_train 1000 --n_valid 100 --n_test 0 --train_speakers 50 --test_speakers 0
    python data_prep/make_mixtures.py --manifest results/prep/iden_test.csv \\
        --data_folder /data/voxceleb2 --save_folder /data/mix \\
        --n_train 0 --n_valid 0 --n_test 200 --train_speakers 50 --valid_speakers 0 \\
        --test_speakers 50
"""

import argparse
import logging

from sepid.data.mixture_corpus import make_mixtures
from sepid.data.mixtures import (
    DEFAULT_N_MIX,
    DEFAULT_SPLIT_SPEAKERS,
    LENGTH_MODES,
    LOUDNESS_MODES,
    SPLITS,
)
from sepid.data.speakers import parse_speakers_arg
from sepid.training.experiment import guard_output_folder

logger = logging.getLogger(__name__)


def main(argv=None):
    """Command-line entry point (see ``--help``); returns the output paths."""
    parser = argparse.ArgumentParser(
        description="Make two-speaker mixtures (mix, s1, s2 + speaker labels) from a manifest."
    )
    parser.add_argument(
        "--manifest", required=True, help="speaker manifest (ID,duration,wav,spk_id)"
    )
    parser.add_argument("--data_folder", required=True, help="corpus root ($data_root)")
    parser.add_argument("--save_folder", required=True, help="root of the mixture corpus")
    for split in SPLITS:
        parser.add_argument(f"--n_{split}", type=int, default=DEFAULT_N_MIX[split])
    for split in SPLITS:
        parser.add_argument(
            f"--{split}_speakers",
            default=str(DEFAULT_SPLIT_SPEAKERS[split]),
            type=parse_speakers_arg,
            help="N (next N sorted) | id1,id2 | file with one ID per line"
            + (" | 0: held-out utterances of the train speakers" if split == "valid" else ""),
        )
    parser.add_argument("--sample_rate", type=int, default=None, help="default: the corpus's")
    parser.add_argument("--length_mode", choices=LENGTH_MODES, default="min")
    parser.add_argument(
        "--gain_db_range", type=float, nargs=2, default=(0.0, 0.0), metavar=("LOW", "HIGH")
    )
    parser.add_argument("--loudness", choices=LOUDNESS_MODES, default="none")
    parser.add_argument("--min_duration", type=float, default=1.0)
    parser.add_argument("--valid_utt_fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument(
        "--allow_fewer",
        action="store_true",
        help="when --n_<split> exceeds the distinct pairs of utterances the split has, make "
        "that many with a warning (default: an error naming the maximum)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the mixtures of a run with other options in --save_folder (deleted "
        "first), or write into a non-empty folder make_mixtures did not write",
    )
    args = vars(parser.parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    n_mix = {split: args.pop(f"n_{split}") for split in SPLITS}
    split_speakers = {split: args.pop(f"{split}_speakers") for split in SPLITS}
    # writable, and one run per folder (a second one would take the first's files as leftovers)
    guard_output_folder(args["save_folder"], option="--save_folder")
    outputs = make_mixtures(n_mix=n_mix, split_speakers=split_speakers, **args)
    for key, path in outputs.items():
        logger.info("%s: %s", key, path)
    return outputs


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Prepares the speaker ID / verification manifests of any folder of speaker-labelled audio.

The command line of :func:`sepid.data.folder.prepare_folder` (nested or flat layouts, the
generated trial list: see there; outputs, splits and bad-file handling: :mod:`sepid.data.prep`).
Recipes call the same function from their YAML (``!name:sepid.data.folder.prepare_folder``).

Example::

    python data_prep/folder_prepare.py --data_folder tests/samples/librispeech-mini/test-other \\
        --save_folder results/libri_mini
"""

from sepid.data.folder import prepare_folder
from sepid.data.prep import prep_arg_parser, run_prep
from sepid.data.speakers import parse_speakers_arg


def main(argv=None):
    """Command-line entry point (see ``--help``); returns the output paths."""
    parser = prep_arg_parser(
        "Prepare speaker ID / verification manifests of a speaker-labelled folder.",
        "<speaker>/**/<utt> or flat folder.",
    )
    parser.add_argument("--n_trials", type=int, default=None)
    parser.add_argument("--trials_per_utterance", type=int, default=5)
    parser.add_argument(
        "--trial_speakers",
        default="all",
        type=parse_speakers_arg,
        help="speakers of the generated trial list (same forms as --speakers; none: no trials)",
    )
    parser.add_argument(
        "--extensions",
        default=".wav,.flac",
        type=lambda v: tuple(e.strip() for e in v.split(",") if e.strip()),
        help="comma-separated audio extensions",
    )
    return run_prep(prepare_folder, parser.parse_args(argv))


if __name__ == "__main__":
    main()

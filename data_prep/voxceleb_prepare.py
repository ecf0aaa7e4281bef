#!/usr/bin/env python3
"""Prepares the speaker ID / verification manifests of a VoxCeleb1 or VoxCeleb2 folder.

The command line of :func:`sepid.data.voxceleb.prepare_voxceleb` (layouts, m4a conversion, the
trial list: see there; outputs, splits and bad-file handling: :mod:`sepid.data.prep`). Recipes
call the same function from their YAML (``!name:sepid.data.voxceleb.prepare_voxceleb``).

Example::

    python data_prep/voxceleb_prepare.py --data_folder /data/voxceleb1 --save_folder results/vox1 \\
        --verification_file /data/voxceleb1/veri_test2.txt
"""

from sepid.data.prep import prep_arg_parser, run_prep
from sepid.data.voxceleb import prepare_voxceleb


def main(argv=None):
    """Command-line entry point (see ``--help``); returns the output paths."""
    parser = prep_arg_parser(
        "Prepare VoxCeleb1/2 manifests for speaker identification and verification.",
        "VoxCeleb folder.",
    )
    parser.add_argument("--verification_file", default=None, help="label enrol test trial list")
    parser.add_argument(
        "--no_convert_m4a", dest="convert_m4a", action="store_false", help="do not run ffmpeg"
    )
    parser.add_argument("--exclude_verification_speakers", action="store_true")
    return run_prep(prepare_voxceleb, parser.parse_args(argv))


if __name__ == "__main__":
    main()

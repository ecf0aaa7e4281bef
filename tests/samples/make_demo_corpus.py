#!/usr/bin/env python3
"""Writes the demo corpus's training speakers: one cropped utterance per LibriSpeech speaker.

``tests/samples/librispeech-mini/train-clean-100`` was made by this script from the 251 speakers
of LibriSpeech ``train-clean-100`` (one utterance each: the first in sorted order, e.g.
``103-1240-0000``), so that the whole demo corpus stays under 40 MB::

    python tests/samples/make_demo_corpus.py --source /data/LibriSpeech/train-clean-100 \\
        --out tests/samples/librispeech-mini/train-clean-100 --seconds 5.5

``--source`` is a LibriSpeech subset (``<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac``) or
a flat folder of such files; the first file of each speaker in sorted order is taken. Each is cut
to its central ``--seconds`` (shorter files are kept whole) and written as 16-bit 16 kHz mono FLAC
under its own name, in a flat folder (speaker = file name before the first ``-``).
``CROPS.tsv`` lists the source file, the crop's start and its length in samples, so each crop can
be traced to its LibriSpeech utterance; ``SPEAKERS.TXT`` keeps LibriSpeech's header and the rows of
the kept speakers (when the source or its parent has one), ``LICENSE.TXT`` LibriSpeech's licence.
The output is the same for the same source (no randomness).
"""

import argparse
import logging
import os
from pathlib import Path

import soundfile as sf

logger = logging.getLogger(__name__)

LICENSE = """\
LibriSpeech (c) 2014 by Vassil Panayotov

LibriSpeech ASR corpus is licensed under a
Creative Commons Attribution 4.0 International License.

See <http://creativecommons.org/licenses/by/4.0/>.
"""


def first_utterance_per_speaker(source):
    """``{speaker: path}``: the first ``.flac`` of each speaker in sorted path order."""
    chosen = {}
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(".flac") and "-" in name:
                chosen.setdefault(name.split("-", 1)[0], Path(dirpath) / name)
    if not chosen:
        raise FileNotFoundError(
            f"No <speaker>-<chapter>-<utt>.flac under {source}: pass a LibriSpeech subset folder."
        )
    return chosen


def crop_file(source, out, seconds, sample_rate=16000):
    """Writes the central ``seconds`` of ``source`` to ``out`` (16-bit FLAC); returns
    ``(start, length)`` in samples."""
    info = sf.info(source)
    if info.samplerate != sample_rate or info.channels != 1:
        raise ValueError(
            f"{source}: {info.samplerate} Hz, {info.channels} channel(s); expected {sample_rate} "
            "Hz mono (LibriSpeech)."
        )
    length = min(info.frames, round(seconds * sample_rate))
    start = (info.frames - length) // 2
    audio, _ = sf.read(source, start=start, frames=length, dtype="int16")
    sf.write(out, audio, sample_rate, format="FLAC", subtype="PCM_16", compression_level=1.0)
    return start, length


def speakers_table(source, speakers):
    """LibriSpeech's SPEAKERS.TXT header and the rows of ``speakers``, or None without one."""
    for folder in (Path(source), Path(source).parent):
        table = folder / "SPEAKERS.TXT"
        if table.is_file():
            lines = table.read_text().splitlines()
            keep = [
                line
                for line in lines
                if line.startswith(";") or line.split("|", 1)[0].strip() in speakers
            ]
            return "\n".join(keep) + "\n"
    return None


def make_demo_corpus(source, out, seconds=5.5):
    """Writes one central crop per speaker of ``source`` to the flat folder ``out``.

    Arguments
    ---------
    source : str or Path
        LibriSpeech subset folder, nested or flat.
    out : str or Path
        Output folder (created; existing crops of the same names are overwritten).
    seconds : float
        Crop length; shorter utterances are kept whole.

    Returns
    -------
    list of Path
        The written audio files.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = first_utterance_per_speaker(source)
    rows, written = ["file\tsource\tstart_sample\tn_samples"], []
    for spk in sorted(chosen, key=int):
        path = chosen[spk]
        start, length = crop_file(path, out / path.name, seconds)
        rows.append(
            f"{path.name}\t{Path(os.path.relpath(path, source)).as_posix()}\t{start}\t{length}"
        )
        written.append(out / path.name)
    (out / "CROPS.tsv").write_text("\n".join(rows) + "\n")
    (out / "LICENSE.TXT").write_text(LICENSE)
    table = speakers_table(source, set(chosen))
    if table is not None:
        (out / "SPEAKERS.TXT").write_text(table)
    total = sum(f.stat().st_size for f in written)
    logger.info(
        "Wrote %d crops of at most %.1f s to %s (%.1f MB)", len(written), seconds, out, total / 1e6
    )
    return written


def main(argv=None):
    """Command-line entry point (see ``--help``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", required=True, help="LibriSpeech train-clean-100 folder")
    parser.add_argument("--out", default="tests/samples/librispeech-mini/train-clean-100")
    parser.add_argument("--seconds", type=float, default=5.5, help="crop length (central)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    make_demo_corpus(source=args.source, out=args.out, seconds=args.seconds)


if __name__ == "__main__":
    main()

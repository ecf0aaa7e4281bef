"""Real-time factor and memory of the pretrained interfaces against the pure model forward.

Usage (after ``python recipes/demo/run.py --until joint-export``, whose exports it loads by
default)::

    python tests/benchmarks/bench_interfaces_rtf.py \\
        [--speaker results/demo/speaker-export] [--joint results/demo/joint-export] \\
        [--seconds 10 60 120] [--whole_max_seconds 60] \\
        [--out tests/benchmarks/results/interfaces_rtf.json]

The committed result was measured on the exports of the previous demo configuration (a 2-layer,
32-wide WavLM and a 16-channel SepFormer, joint chunks of 4 s overlapping by 0.5 s).

For each length, a file of real speech (LibriSpeech test-other utterances, concatenated) and, for
the joint model, a two-speaker mixture of such files at its rate, then, each in a fresh process:

- speaker: ``encode_file(path)`` against the model forward on the same, already loaded tensor,
  both ways the model can see it: ``embed_in_chunks`` (what ``encode_file`` computes: chunks of
  ``chunk_seconds``) and one forward over the whole signal;
- joint: ``separate_file(path)`` against ``separate_batch`` on the loaded tensor (separation in
  chunks of the export's ``separation_chunk_seconds``, aligned and cross-faded, and the speaker
  of each output: the whole model, no file I/O, no writing), and against ``forward_whole``: the
  same with one separator forward over the whole signal (``separation_chunk_seconds: null``, what
  the interface did before it chunked; skipped above ``--whole_max_seconds``, its memory grows
  with the square of the length).

Times are the best of ``--repeats`` calls (``time.perf_counter``; the interface and the forwards
called in turn, round after round), as real-time factors (seconds of compute per second of
audio); the ratio interface / forward is the interface's overhead.
Memory: the growth of the process's peak RSS (``ru_maxrss``) over the loaded model during one
interface call, per length (flat in length = bounded), and for the whole-signal forward, run
last, the growth of the peak it reaches (no more than the interface's: the interface's value).
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from bench_common import REPO, write_result  # sibling module (the script folder is on sys.path)

CORPUS = REPO / "tests/samples/librispeech-mini/test-other"


def speech(seconds, rate, offset=0):
    """``seconds`` of real speech at ``rate``: test-other utterances, concatenated in order."""
    import torchaudio

    files = sorted(CORPUS.rglob("*.flac"))
    parts, total = [], 0
    i = offset
    while total < seconds * rate:
        sig, sr = sf.read(files[i % len(files)], dtype="float32")
        if sr != rate:
            sig = torchaudio.functional.resample(torch.from_numpy(sig), sr, rate).numpy()
        parts.append(sig)
        total += len(sig)
        i += 1
    return np.concatenate(parts)[: seconds * rate]


def best_of(fns, repeats):
    """The best time of each of ``fns`` (name -> callable) over ``repeats`` rounds, the calls
    interleaved (one of each per round) so that a load that comes and goes on a shared machine
    falls on all of them alike."""
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}


def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def without_chunking(model, fn):
    """``fn`` with the joint model separating in one pass (``separation_chunk_seconds: null``)."""

    def whole():
        chunk = model.hparams.separation_chunk_seconds
        model.hparams.separation_chunk_seconds = None
        try:
            return fn()
        finally:
            model.hparams.separation_chunk_seconds = chunk

    return whole


def child(kind, folder, seconds, work, repeats, whole_max_seconds):
    """(in a fresh process) one model, one length."""
    from speechbrain.inference.interfaces import foreign_class

    torch.set_grad_enabled(False)
    classname = "WavLMSpeakerInterface" if kind == "speaker" else "SepformerSpeakerInterface"
    model = foreign_class(
        source=str(folder),
        pymodule_file="custom_interface.py",
        classname=classname,
        savedir=str(Path(work) / f"load-{kind}"),
    )
    # the rate the model takes its input at: the separator's for the joint model
    rate = int(
        model.hparams.sample_rate if kind == "speaker" else model.hparams.separator_sample_rate
    )
    path = Path(work) / f"{kind}-{seconds}s.wav"
    if kind == "speaker":
        sf.write(path, speech(seconds, rate), rate, subtype="PCM_16")
    else:
        mix = speech(seconds, rate) + speech(seconds, rate, offset=50)
        sf.write(path, 0.5 * mix, rate, subtype="FLOAT")
    wav = torch.from_numpy(sf.read(path, dtype="float32")[0]).unsqueeze(0)
    before = peak_mib()
    if kind == "speaker":
        interface_call = lambda: model.encode_file(str(path))  # noqa: E731
        module = sys.modules[type(model).__module__]
        chunk = int(model.hparams.chunk_seconds * rate)
        lens = torch.ones(1)
        forwards = {
            "forward_chunked": lambda: module.embed_in_chunks(
                model.mods.embedder, wav, lens, chunk
            ),
            "forward_whole": lambda: model.mods.embedder(wav, lens),
        }
    else:
        interface_call = lambda: model.separate_file(str(path))  # noqa: E731
        forwards = {"separate_batch": lambda: model.separate_batch(wav)}
        if seconds <= whole_max_seconds:
            forwards["forward_whole"] = without_chunking(model, lambda: model.separate_batch(wav))
    interface_call()  # warm-up (and the memory of one call)
    grown = peak_mib() - before
    result = {
        "kind": kind,
        "seconds": seconds,
        "sample_rate": rate,
        "interface_peak_rss_growth_mib": grown,
    }
    if kind == "joint":
        result["separation_chunk_seconds"] = model.hparams.separation_chunk_seconds
        result["separation_overlap_seconds"] = model.hparams.separation_overlap_seconds
    for name, fn in forwards.items():
        fn()  # warm-up
        if name == "forward_whole":
            result["forward_whole_peak_rss_growth_mib"] = peak_mib() - before
    best = best_of({"interface": interface_call, **forwards}, repeats)
    for name, seconds_taken in best.items():
        result[f"{name}_rtf"] = seconds_taken / seconds
    first = next(iter(forwards))
    result["interface_over_forward"] = result["interface_rtf"] / result[f"{first}_rtf"]
    if "forward_whole_rtf" in result:
        result["interface_over_forward_whole"] = (
            result["interface_rtf"] / result["forward_whole_rtf"]
        )
    print(json.dumps(result))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--speaker", default=REPO / "results/demo/speaker-export")
    parser.add_argument("--joint", default=REPO / "results/demo/joint-export")
    parser.add_argument("--seconds", type=int, nargs="+", default=[10, 60, 120])
    parser.add_argument(
        "--whole_max_seconds",
        type=int,
        default=60,
        help="longest file the joint model's whole-signal forward runs on (memory ~ length^2)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", default="/tmp/sepid-interfaces-rtf")
    parser.add_argument("--out", default=REPO / "tests/benchmarks/results/interfaces_rtf.json")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, folder, seconds = args.child
        child(kind, folder, int(seconds), args.work, args.repeats, args.whole_max_seconds)
        return
    Path(args.work).mkdir(parents=True, exist_ok=True)
    rows = []
    for kind, folder in (("speaker", args.speaker), ("joint", args.joint)):
        for seconds in args.seconds:
            out = subprocess.run(
                [sys.executable, __file__, "--child", kind, str(folder), str(seconds)]
                + ["--work", args.work, "--repeats", str(args.repeats)]
                + ["--whole_max_seconds", str(args.whole_max_seconds)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    write_result(
        args.out,
        {
            "rows": rows,
            "models": {"speaker": str(args.speaker), "joint": str(args.joint)},
            "method": __doc__.split("\n\n", 3)[3].strip(),
        },
    )


if __name__ == "__main__":
    main()

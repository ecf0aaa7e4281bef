"""Benchmark: separation real-time factor on this machine's CPU.

Times ``SepformerSeparation.separate_batch`` (loaded through ``from_hparams`` from a local folder)
for the architecture of ``speechbrain/sepformer-whamr`` (random weights: the Hub is not reachable
here; speed does not depend on the weights) and for the tiny test model, on 4 s and 10 s mixtures
at 8 kHz. RTF = processing seconds / audio seconds (below 1: faster than real time).

Run: ``python tests/benchmarks/bench_separation_rtf.py [--out ...]``. Writes JSON; not a test.
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch
from bench_common import REPO, write_result  # sibling module (the script folder is on sys.path)

from sepid.separation.separator import load_separator
from sepid.tiny import SEPFORMER_WHAMR_SIZE, save_tiny_sepformer


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--durations", type=float, nargs="+", default=[4.0, 10.0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "tests/benchmarks/results/separation_rtf.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-rtf-"))
    results = {"sample_rate": 8000, "models": {}}
    for name, sizes in (("sepformer-whamr architecture", SEPFORMER_WHAMR_SIZE), ("tiny", {})):
        folder = save_tiny_sepformer(work / name.replace(" ", "_"), **sizes)
        separator = load_separator(folder, work / f"{name.replace(' ', '_')}_run")
        n_params = sum(p.numel() for p in separator.mods.parameters())
        timings = {}
        for seconds in args.durations:
            mix = torch.randn(1, int(seconds * 8000)) * 0.1
            with torch.no_grad():
                separator.separate_batch(mix)  # warm-up
                start = time.perf_counter()
                for _ in range(args.repeats):
                    separator.separate_batch(mix)
            elapsed = (time.perf_counter() - start) / args.repeats
            timings[f"{seconds:g}s"] = {"seconds": elapsed, "rtf": elapsed / seconds}
        results["models"][name] = {"parameters": n_params, "timings": timings}
    write_result(args.out, results)


if __name__ == "__main__":
    main()

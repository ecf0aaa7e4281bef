"""Benchmark: memory and time of one speaker training step, with and without activation
checkpointing.

Builds the encoder, classifier and loss from the real ``hparams/wavlm-lora-arcface.yaml`` (a
random model with WavLM Base+'s configuration: the Hub is not reachable here, and speed and memory
do not depend on the weights; 1,000 speakers) and runs the recipe's step on random 16 kHz crops of
``segment_seconds``: encoder (frozen WavLM + LoRA, mean pooling, projection) -> ArcFace loss ->
backward -> AdamW step, in train mode. Each (``activation_checkpointing``, batch size) runs in a
fresh process with ``--threads`` torch threads (default 1); it records the median step time
(wall and CPU), peak RSS, and the peak of glibc's live heap (``bench_common.HeapPeak``), as
``bench_joint_step.py`` does, and the checkpointed/plain ratios per batch size.

Run: ``python tests/benchmarks/bench_speaker_step.py [--batch_sizes 1 8] [--seconds 3]``.
Writes ``tests/benchmarks/results/speaker_step.json``. A benchmark, never a timed test.
"""

import argparse
import tempfile
from pathlib import Path

import torch

# sibling module (the script folder is on sys.path)
from bench_common import (
    REPO,
    checkpointing_ratios,
    emit_record,
    measure_steps,
    run_case,
    write_result,
)

YAML = REPO / "hparams/wavlm-lora-arcface.yaml"


def build(checkpointing, work, n_speakers=1000):
    from hyperpyyaml import load_hyperpyyaml
    from transformers import WavLMConfig, WavLMModel

    from sepid.speaker.encoder import set_classifier_outputs

    WavLMModel(WavLMConfig()).save_pretrained(work / "wavlm-base-size")  # Base+'s sizes
    overrides = {
        "data_folder": str(work / "data"),
        "output_folder": str(work / "out"),
        "wavlm_source": str(work / "wavlm-base-size"),
        "activation_checkpointing": checkpointing,
    }
    with open(YAML, encoding="utf-8") as f:
        hparams = load_hyperpyyaml(f, overrides)
    set_classifier_outputs(hparams["classifier"], n_speakers)
    modules = torch.nn.ModuleDict(
        {"encoder": hparams["encoder"], "classifier": hparams["classifier"]}
    ).train()
    optimizer = hparams["opt_class"]([p for p in modules.parameters() if p.requires_grad])
    return hparams, modules, optimizer


def child(args):
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-speaker-step-"))
    hparams, modules, optimizer = build(args.checkpointing == "on", work)
    g = torch.Generator().manual_seed(0)
    n = int(args.seconds * hparams["sample_rate"])
    wavs = 0.1 * torch.randn(args.batch_size, n, generator=g)
    labels = torch.randint(0, 1000, (args.batch_size, 1), generator=g)
    lens = torch.ones(args.batch_size)

    def step():
        optimizer.zero_grad(set_to_none=True)
        predictions = modules["classifier"](modules["encoder"](wavs, lens).unsqueeze(1))
        hparams["compute_cost"](predictions, labels).backward()
        optimizer.step()

    record = {
        "activation_checkpointing": args.checkpointing == "on",
        "batch_size": args.batch_size,
        "seconds": args.seconds,
        **measure_steps(step, args.steps, modules),
    }
    emit_record(record)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--checkpointing", nargs="+", default=["off", "on"])
    parser.add_argument("--out", default=str(REPO / "tests/benchmarks/results/speaker_step.json"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each case")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batch_size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        (args.checkpointing,) = args.checkpointing  # one case: a single value
        child(args)
        return
    records = []
    for batch_size in args.batch_sizes:
        for checkpointing in args.checkpointing:
            records.append(
                run_case(
                    __file__,
                    f"--batch_size={batch_size}",
                    f"--checkpointing={checkpointing}",
                    f"--steps={args.steps}",
                    f"--seconds={args.seconds}",
                    f"--threads={args.threads}",
                )
            )
    ratios = checkpointing_ratios(records, ("batch_size",), lambda r: f"batch {r['batch_size']}")
    write_result(args.out, {"cases": records, "checkpointing_over_plain": ratios})


if __name__ == "__main__":
    main()

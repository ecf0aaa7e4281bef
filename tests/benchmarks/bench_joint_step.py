"""Benchmark: memory and time of one joint training step, with and without activation checkpointing.

Builds the modules from the real ``hparams/sepformer-wavlm-speaker.yaml`` (random weights: the
Hub is not reachable here, and speed and memory do not depend on the weights) and runs the
recipe's own ``JointBrain.fit_batch`` in train mode (forward, backward, clipping, optimizer
step: SepFormer -> differentiable resampling -> WavLM + LoRA -> ArcFace, PIT SI-SNR + speaker
loss) on a batch of random 8 kHz sources. Configurations:

* ``tiny``: the test/demo model sizes;
* ``default``: the YAML's own sizes (speechbrain/sepformer-whamr's architecture, WavLM Base+'s).

Each (configuration, ``activation_checkpointing``, batch size) runs in a fresh process, so its
peak RSS is its own. Per case it records:

* ``seconds_per_step``: the median of ``--steps`` steps after one warm-up step, and
  ``cpu_seconds_per_step``, the process's CPU time per step: each case runs ``--threads`` torch
  threads (default 1), so on a shared machine the CPU time is the step's cost where the wall time
  is not;
* ``peak_rss_gib``: the process's maximum resident set size (``ru_maxrss``) over the whole run;
* ``peak_heap_gib``: the peak of glibc's live heap (``mallinfo2``: bytes in use in the arena plus
  mmapped blocks), sampled every millisecond by a thread during the timed steps. RSS stays above
  it because glibc keeps freed memory for reuse;
* ``model_gib``: the heap after building the model, before any step (Adam's state comes later);
* ``saved_for_backward_gib`` by module (no checkpointing only): the bytes autograd keeps for the
  backward pass (each storage once), attributed to the top-level module whose forward saved them
  (separator encoder, masknet, decoder, speaker encoder, classifier): which part holds the memory.

``--malloc_mmap_threshold BYTES`` also runs each checkpointed case with glibc's
``MALLOC_MMAP_THRESHOLD_`` set (freed blocks above that size go back to the system at once, so
RSS follows the live heap; CPU training only: on a GPU torch's caching allocator holds the
activations). It is left out of the ratios.

Run: ``python tests/benchmarks/bench_joint_step.py [--configs tiny default] [--batch_sizes 1 2]``
Writes ``tests/benchmarks/results/joint_step.json``. A benchmark, never a timed test.
"""

import argparse
import functools
import tempfile
from pathlib import Path

import speechbrain as sb
import torch

# sibling module (the script folder is on sys.path)
from bench_common import (
    GIB,
    REPO,
    checkpointing_ratios,
    emit_record,
    load_script,
    measure_steps,
    run_case,
    write_result,
)

YAML = REPO / "hparams/sepformer-wavlm-speaker.yaml"
SIZE_KEYS = {  # sepid.tiny's SepFormer sizes -> the joint YAML's keys
    "channels": "N_encoder_out",
    "ffn": "transformer_ffn",
    "layers": "transformer_layers",
    "nhead": "transformer_heads",
    "blocks": "dual_path_layers",
    "chunk": "chunk_size",
}
MODULES = ("separator_encoder", "masknet", "separator_decoder", "speaker_encoder", "classifier")


def build_brain(config, checkpointing, work, n_speakers=100):
    """The JointBrain of ``recipes/joint/train.py`` with the YAML's modules (random weights)."""
    from hyperpyyaml import load_hyperpyyaml
    from transformers import WavLMConfig, WavLMModel

    from sepid.speaker.encoder import set_classifier_outputs
    from sepid.tiny import TINY_SEPFORMER, save_tiny_wavlm

    overrides = {
        "data_folder": str(work / "data"),
        "output_folder": str(work / "out"),
        "speaker_source": None,
        "activation_checkpointing": checkpointing,
        "speed_perturb": False,
    }
    if config == "tiny":
        overrides["wavlm_source"] = str(save_tiny_wavlm(work / "wavlm"))
        overrides.update({SIZE_KEYS[k]: v for k, v in TINY_SEPFORMER.items()})
        overrides["embedding_dim"] = 64
    else:  # WavLMConfig's defaults are WavLM Base(+)'s sizes; the YAML's are sepformer-whamr's
        WavLMModel(WavLMConfig()).save_pretrained(work / "wavlm-base-size")
        overrides["wavlm_source"] = str(work / "wavlm-base-size")
    with open(YAML, encoding="utf-8") as f:
        hparams = load_hyperpyyaml(f, overrides)
    speakers = [f"spk{i}" for i in range(n_speakers)]
    hparams["label_encoder"].update_from_iterable(speakers)
    set_classifier_outputs(hparams["classifier"], n_speakers)
    recipe = load_script("recipes/joint/train.py", "joint_train")
    brain = recipe.JointBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts={"max_grad_norm": hparams["max_grad_norm"]},
    )
    brain.train_set = None  # batches are made here, not drawn from a dataset
    brain.on_fit_start()
    brain.on_stage_start(sb.Stage.TRAIN, 1)
    brain.modules.train()
    return brain, speakers


def make_batch(speakers, batch_size, seconds, sample_rate=8000):
    from speechbrain.dataio.batch import PaddedBatch

    g = torch.Generator().manual_seed(0)
    n = int(seconds * sample_rate)
    return PaddedBatch(
        [
            {
                "id": f"b{i}",
                "s1_sig": 0.1 * torch.randn(n, generator=g),
                "s2_sig": 0.1 * torch.randn(n, generator=g),
                "s1_spk": speakers[2 * i],
                "s2_spk": speakers[2 * i + 1],
            }
            for i in range(batch_size)
        ]
    )


def saved_by_module(brain, batch):
    """Bytes autograd saves for the backward pass during one forward, by top-level module."""
    owner, totals = [], dict.fromkeys(MODULES, 0)

    def enter(module, args, name):
        owner.append(name)

    def leave(module, args, output):
        owner.pop()  # returns None: the output is left as it is

    hooks = []
    for name in MODULES:
        module = brain.modules[name]
        hooks.append(module.register_forward_pre_hook(functools.partial(enter, name=name)))
        hooks.append(module.register_forward_hook(leave))

    seen = set()  # a storage saved twice (or through several views) is held once

    def pack(t):
        storage = t.untyped_storage()
        if owner and storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            totals[owner[-1]] += storage.nbytes()
        return t

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            predictions = brain.compute_forward(batch, sb.Stage.TRAIN)
            loss = brain.compute_objectives(predictions, batch, sb.Stage.TRAIN)
        loss.backward()
        brain.optimizer.zero_grad(set_to_none=True)
    finally:
        for h in hooks:
            h.remove()
    return {k: round(v / GIB, 3) for k, v in totals.items()}


def child(args):
    """One case, in this process; prints its JSON record."""
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix=f"bench-joint-{args.config}-"))
    brain, speakers = build_brain(args.config, args.checkpointing == "on", work)
    batch = make_batch(speakers, args.batch_size, args.seconds)
    record = {
        "config": args.config,
        "activation_checkpointing": args.checkpointing == "on",
        "batch_size": args.batch_size,
        "seconds": args.seconds,
        **measure_steps(lambda: brain.fit_batch(batch), args.steps, brain.modules),
        "optimizer_steps": brain.optimizer_step,
    }
    if args.checkpointing == "off" and args.attribute:
        record["saved_for_backward_gib"] = saved_by_module(brain, batch)
    emit_record(record)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--configs", nargs="+", default=["tiny", "default"])
    parser.add_argument("--checkpointing", nargs="+", default=["off", "on"])
    parser.add_argument("--out", default=str(REPO / "tests/benchmarks/results/joint_step.json"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each case")
    parser.add_argument(
        "--malloc_mmap_threshold",
        type=int,
        default=0,
        help="also run the checkpointed case with glibc's MALLOC_MMAP_THRESHOLD_ at this many "
        "bytes (0: not)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--batch_size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--attribute", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        (args.checkpointing,) = args.checkpointing  # one case: a single value
        child(args)
        return
    records = []
    for config in args.configs:
        for batch_size in args.batch_sizes:
            case = [
                f"--config={config}",
                f"--batch_size={batch_size}",
                f"--steps={args.steps}",
                f"--seconds={args.seconds}",
                f"--threads={args.threads}",
            ]
            for checkpointing in args.checkpointing:
                options = [*case, f"--checkpointing={checkpointing}"]
                if batch_size == args.batch_sizes[0]:
                    options.append("--attribute")
                records.append(run_case(__file__, *options))
            if args.malloc_mmap_threshold and "on" in args.checkpointing:
                # glibc returns freed blocks above this size to the system at once: RSS follows
                # the live heap more closely (a CPU-training setting; GPUs use torch's allocator)
                threshold = args.malloc_mmap_threshold
                record = run_case(
                    __file__,
                    *case,
                    "--checkpointing=on",
                    env={"MALLOC_MMAP_THRESHOLD_": str(threshold)},
                )
                records.append({**record, "malloc_mmap_threshold": threshold})
    ratios = checkpointing_ratios(
        [r for r in records if "malloc_mmap_threshold" not in r],
        ("config", "batch_size"),
        lambda r: f"{r['config']} batch {r['batch_size']}",
    )
    write_result(args.out, {"cases": records, "checkpointing_over_plain": ratios})


if __name__ == "__main__":
    main()

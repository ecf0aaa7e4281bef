"""Benchmark: one joint training step (forward, backward, optimizer) on this machine's CPU.

Runs ``JointBrain.fit_batch`` (the recipe's own step: SepFormer -> differentiable resampling ->
WavLM + LoRA -> ArcFace, PIT SI-SNR + speaker loss) for two configurations with random weights
(the Hub is not reachable here; speed and memory do not depend on the weights):

* ``tiny``: the test/demo models;
* ``default``: the sizes of ``hparams/sepformer-wavlm-speaker.yaml`` (sepformer-whamr's
  architecture, WavLM Base+'s), batch 2 x 4 s at 8 kHz.

Peak memory is the process's maximum resident set size (``ru_maxrss``) after each
configuration, so the second figure includes the first's; the default config runs last.

Run: ``python tests/benchmarks/bench_joint_step.py [--steps 3] [--out ...]``. Writes JSON.
"""

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch
import torchaudio

# sibling module (the script folder is on sys.path)
from bench_common import REPO, load_script, write_result
from hyperpyyaml import load_hyperpyyaml
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.lobes.models.ECAPA_TDNN import Classifier
from speechbrain.nnet.losses import AdditiveAngularMargin, LogSoftmaxWrapper
from transformers import WavLMConfig, WavLMModel

from sepid.speaker.encoder import WavLMSpeakerEncoder
from sepid.tiny import SEPFORMER_WHAMR_SIZE, TINY_SEPFORMER, TINY_SEPFORMER_YAML, save_tiny_wavlm

CONFIGS = {
    "tiny": {"sepformer": TINY_SEPFORMER, "wavlm_base_size": False, "embedding_dim": 64},
    "default": {"sepformer": SEPFORMER_WHAMR_SIZE, "wavlm_base_size": True, "embedding_dim": 512},
}


class Speaker:
    """What the recipe reads from the speaker experiment: its label encoder."""

    def __init__(self, speakers):
        self.label_encoder = CategoricalEncoder()
        self.label_encoder.update_from_iterable(speakers)


def build_brain(recipe, config, work, n_speakers=100):
    sep = load_hyperpyyaml(TINY_SEPFORMER_YAML.format(sample_rate=8000, **config["sepformer"]))
    if config["wavlm_base_size"]:  # WavLMConfig's defaults are WavLM Base(+)'s sizes
        wavlm = work / "wavlm-base-size"
        WavLMModel(WavLMConfig()).save_pretrained(wavlm)
    else:
        wavlm = save_tiny_wavlm(work / "wavlm")
    encoder = WavLMSpeakerEncoder(wavlm, embedding_dim=config["embedding_dim"])
    classifier = Classifier(input_size=config["embedding_dim"], out_neurons=n_speakers)
    speakers = [f"spk{i}" for i in range(n_speakers)]
    hparams = {
        "speed_perturb": False,
        "num_spks": 2,
        "speaker": Speaker(speakers),
        "speaker_cost": LogSoftmaxWrapper(AdditiveAngularMargin(margin=0.2, scale=30.0)),
        "threshold_byloss": True,
        "loss_lower_lim": -30.0,
        "si_snr_loss_weight": 1.0,
        "speaker_loss_weight": 0.1,
    }
    modules = {
        "separator_encoder": sep["Encoder"],
        "masknet": sep["MaskNet"],
        "separator_decoder": sep["Decoder"],
        "speaker_encoder": encoder,
        "classifier": classifier,
        "resampler": torchaudio.transforms.Resample(8000, 16000),
    }
    brain = recipe.JointBrain(
        modules=modules,
        opt_class=lambda params: torch.optim.Adam(params, lr=1e-4),
        hparams=hparams,
        run_opts={"max_grad_norm": 5.0},
    )
    brain.on_fit_start()
    brain.on_stage_start = lambda *a, **k: None
    brain.n_dropped = 0
    return brain, speakers


def make_batch(speakers, batch_size, seconds):
    n = int(seconds * 8000)
    items = [
        {
            "id": f"b{i}",
            "s1_sig": torch.randn(n) * 0.1,
            "s2_sig": torch.randn(n) * 0.1,
            "s1_spk": speakers[2 * i],
            "s2_spk": speakers[2 * i + 1],
        }
        for i in range(batch_size)
    ]
    return PaddedBatch(items)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--configs", nargs="+", default=["tiny", "default"])
    parser.add_argument("--out", default=str(REPO / "tests/benchmarks/results/joint_step.json"))
    args = parser.parse_args()
    recipe = load_script("recipes/joint/train.py", "joint_train")
    results = {"batch_size": args.batch_size, "seconds": args.seconds, "configs": {}}
    for name in args.configs:
        work = Path(tempfile.mkdtemp(prefix=f"bench-joint-{name}-"))
        brain, speakers = build_brain(recipe, CONFIGS[name], work)
        batch = make_batch(speakers, args.batch_size, args.seconds)
        brain.fit_batch(batch)  # warm-up
        start = time.perf_counter()
        for _ in range(args.steps):
            brain.fit_batch(batch)
        step = (time.perf_counter() - start) / args.steps
        params = sum(p.numel() for p in brain.modules.parameters())
        trainable = sum(p.numel() for p in brain.modules.parameters() if p.requires_grad)
        results["configs"][name] = {
            "seconds_per_step": step,
            "parameters": params,
            "trainable_parameters": trainable,
            "peak_rss_mib_so_far": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        print(name, results["configs"][name], flush=True)
    write_result(args.out, results)


if __name__ == "__main__":
    main()

"""Benchmark: the speaker evaluation's embedding stage, exact batched embeddings (issue 18).

Three ways to embed the same utterances, on a randomly initialised model with WavLM Base+'s exact
configuration (12 layers, 768 wide, group norm; built from a ``WavLMConfig``, saved and loaded by
``WavLMSpeakerEncoder`` as ``microsoft/wavlm-base-plus`` is) and real speech of mixed lengths
(LibriSpeech files concatenated to 2-20 s, uniformly spread):

* ``padded_unmasked``: the embedding stage before issue 18: batches of ``batch_size`` utterances
  sorted by duration (as ``unique_utterances`` sorts them), zero-padded, the stock WavLM with no
  attention mask (GroupNorm statistics and attention over the padding), mean over valid frames;
* ``exact``: the same batches through today's ``embed_in_chunks`` / ``WavLMSpeakerEncoder``
  (per-utterance GroupNorm statistics, attention mask, valid frames only);
* ``one_at_a_time``: every utterance alone, unpadded (the reference both are compared with).

Timed: the model forward of every batch (audio preloaded; the data loader is the same for all
three), as this process's CPU seconds (the cost; on a machine shared with other jobs the wall
time mostly measures the others: both are recorded, with the load average before and after).
Also recorded: each batched path's cosine to the embedding alone. Each batched path runs
``--repeats`` times, interleaved batch by batch so load changes hit both alike; the best total is
reported. Run: ``python tests/benchmarks/bench_embedding_batching.py [--n_utterances 32]``.
Writes JSON; it is not a test (timings are not asserted).
"""

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_common import REPO, write_result
from transformers import WavLMConfig, WavLMModel

from sepid.data.audio import read_audio
from sepid.speaker.encoder import WavLMSpeakerEncoder, embed_in_chunks, masked_mean

RATE = 16000
# microsoft/wavlm-base-plus's config.json, every value that shapes the network
BASE_PLUS = dict(
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    hidden_act="gelu",
    feat_extract_norm="group",
    feat_extract_activation="gelu",
    do_stable_layer_norm=False,
    conv_dim=(512,) * 7,
    conv_kernel=(10, 3, 3, 3, 3, 2, 2),
    conv_stride=(5, 2, 2, 2, 2, 2, 2),
    conv_bias=False,
    num_conv_pos_embeddings=128,
    num_conv_pos_embedding_groups=16,
    num_buckets=320,
    max_bucket_distance=800,
    layer_norm_eps=1e-5,
)


def speech_of_lengths(data_folder, seconds, seed):
    """One signal per entry of ``seconds``: LibriSpeech files (shuffled) concatenated and cut to
    that length."""
    files = sorted(Path(data_folder).rglob("*.flac"))
    if not files:
        raise FileNotFoundError(f"No .flac files under {data_folder}.")
    rng = random.Random(seed)
    rng.shuffle(files)
    pool = iter(files * (1 + int(sum(seconds)) // 5))
    signals = []
    for s in seconds:
        need, parts = int(s * RATE), []
        while sum(len(p) for p in parts) < need:
            parts.append(read_audio(next(pool), RATE))
        signals.append(torch.cat(parts)[:need])
    return signals


def batches(signals, batch_size):
    """``(indices, wavs [B, T], wav_lens)`` batches of signals sorted by duration, longest first,
    zero-padded as SpeechBrain's ``PaddedBatch`` pads them."""
    order = sorted(range(len(signals)), key=lambda i: -len(signals[i]))
    for k in range(0, len(order), batch_size):
        idx = order[k : k + batch_size]
        total = len(signals[idx[0]])
        wavs = torch.zeros(len(idx), total)
        for row, i in enumerate(idx):
            wavs[row, : len(signals[i])] = signals[i]
        lens = torch.tensor([len(signals[i]) / total for i in idx])
        yield idx, wavs, lens


def padded_unmasked(encoder, wavs, lens):
    """The pre-issue-18 computation: stock WavLM over the padded batch (no attention mask), mean
    over each utterance's valid frames, projection."""
    frames = encoder.backbone(wavs).last_hidden_state
    frame_lens = encoder.frame_lengths(wavs, lens).clamp(max=frames.shape[1])
    return encoder.projection(masked_mean(frames, frame_lens))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data_folder", default="/work/shared/data/librispeech-mini/test-other")
    parser.add_argument("--n_utterances", type=int, default=10)
    parser.add_argument("--min_seconds", type=float, default=2.0)
    parser.add_argument("--max_seconds", type=float, default=20.0)
    parser.add_argument("--batch_size", type=int, default=5)
    parser.add_argument("--chunk_seconds", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", default=str(REPO / "tests/benchmarks/results/embedding_batching.json")
    )
    args = parser.parse_args()
    start = time.time()
    load_before = list(os.getloadavg())
    torch.manual_seed(args.seed)
    step = (args.max_seconds - args.min_seconds) / max(args.n_utterances - 1, 1)
    seconds = [args.min_seconds + i * step for i in range(args.n_utterances)]
    random.Random(args.seed).shuffle(seconds)
    signals = speech_of_lengths(args.data_folder, seconds, args.seed)

    work = Path(tempfile.mkdtemp(prefix="bench-embedding-batching-"))
    WavLMModel(WavLMConfig(**BASE_PLUS)).save_pretrained(work / "base-plus-random")
    encoder = WavLMSpeakerEncoder(work / "base-plus-random", embedding_dim=256, lora_rank=8)
    with torch.no_grad():  # a trained-looking head and adapters (fresh LoRA B is zero)
        for name, p in encoder.named_parameters():
            if ".lora_B" in name:
                p.normal_(0, 0.02)
    encoder.eval()
    chunk = int(args.chunk_seconds * RATE)
    paths = {
        "padded_unmasked": lambda w, n: padded_unmasked(encoder, w, n),
        "exact": lambda w, n: embed_in_chunks(encoder, w, n, chunk),
    }
    times = {name: [0.0] * args.repeats for name in paths}
    cpu = {name: [0.0] * args.repeats for name in paths}
    embeddings = {name: [None] * len(signals) for name in paths}
    padding = []
    with torch.no_grad():
        for idx, wavs, lens in batches(signals, args.batch_size):
            padding.append(float(wavs.numel() / sum(len(signals[i]) for i in idx)))
            for r in range(args.repeats):
                for name, embed in paths.items():
                    t0, c0 = time.perf_counter(), time.process_time()
                    emb = embed(wavs, lens)
                    times[name][r] += time.perf_counter() - t0
                    cpu[name][r] += time.process_time() - c0
                    for row, i in enumerate(idx):
                        embeddings[name][i] = emb[row]
        t0, c0 = time.perf_counter(), time.process_time()
        alone = [embed_in_chunks(encoder, s[None], torch.ones(1), chunk)[0] for s in signals]
        one_at_a_time = time.perf_counter() - t0
        one_at_a_time_cpu = time.process_time() - c0
    alone = F.normalize(torch.stack(alone), dim=-1)

    def agreement(name):
        emb = F.normalize(torch.stack(embeddings[name]), dim=-1)
        cosine = (emb * alone).sum(-1)
        scores = emb @ emb.T - alone @ alone.T
        return {
            "cosine_to_alone_min": round(float(cosine.min()), 7),
            "cosine_to_alone_median": round(float(cosine.median()), 7),
            "max_trial_score_difference": float(scores.abs().max()),
        }

    best = {name: min(t) for name, t in times.items()}
    best_cpu = {name: min(t) for name, t in cpu.items()}
    audio_seconds = sum(len(s) for s in signals) / RATE
    result = {
        "what": "speaker evaluation embedding stage: padded batches without a mask (before "
        "issue 18) vs exact batched embeddings vs one utterance at a time; random model with "
        "WavLM Base+'s configuration, CPU, float32, model forward only (audio preloaded)",
        "command": "python tests/benchmarks/bench_embedding_batching.py "
        + " ".join(f"--{k}={v}" for k, v in vars(args).items() if k != "out"),
        "config": {**BASE_PLUS, "conv_dim": list(BASE_PLUS["conv_dim"])},
        "n_utterances": len(signals),
        "seconds_of_audio": round(audio_seconds, 1),
        "utterance_seconds": {"min": min(seconds), "max": max(seconds)},
        "batch_size": args.batch_size,
        "padding_factor_per_batch": [round(p, 3) for p in padding],
        "cpu_seconds": {
            "padded_unmasked": round(best_cpu["padded_unmasked"], 2),
            "exact": round(best_cpu["exact"], 2),
            "one_at_a_time": round(one_at_a_time_cpu, 2),
        },
        "exact_over_padded_unmasked_cpu": round(best_cpu["exact"] / best_cpu["padded_unmasked"], 3),
        "one_at_a_time_over_padded_unmasked_cpu": round(
            one_at_a_time_cpu / best_cpu["padded_unmasked"], 3
        ),
        "wall_seconds": {
            "padded_unmasked": round(best["padded_unmasked"], 2),
            "exact": round(best["exact"], 2),
            "one_at_a_time": round(one_at_a_time, 2),
        },
        "exact_over_padded_unmasked_wall": round(best["exact"] / best["padded_unmasked"], 3),
        "one_at_a_time_over_padded_unmasked_wall": round(
            one_at_a_time / best["padded_unmasked"], 3
        ),
        "agreement_with_alone": {name: agreement(name) for name in paths},
        "load_average_before": load_before,
        "wall_seconds_total": round(time.time() - start, 1),
    }
    write_result(args.out, result)


if __name__ == "__main__":
    main()

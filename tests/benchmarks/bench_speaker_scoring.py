"""Benchmark: verification scoring when each utterance appears in many trials.

VoxCeleb1-O scores 37,611 trials over 4,708 utterances (about 16 trials per utterance). Measured in
one run, same model, same trials:

* ``project``: the recipe's ``EmbeddingBrain.embed`` (each unique utterance read and embedded
  once, batched by length) + cosine scoring + metrics, exactly as ``recipes/speaker/evaluate.py``;
* ``per_trial``: the reference system's approach, embedding both sides of every trial;
* ``floor``: the model forward alone over the unique utterances (audio preloaded, same batches).

Run: ``python tests/benchmarks/bench_speaker_scoring.py [--out ...] [--layers 4 --hidden 256]``.
Writes JSON; it is not a test (timings are not asserted).
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch

# sibling module (the script folder is on sys.path)
from bench_common import REPO, load_script, write_result

from sepid.data.audio import read_audio
from sepid.data.folder import prepare_folder
from sepid.speaker.encoder import WavLMSpeakerEncoder, embed_in_chunks
from sepid.speaker.evaluation import VerificationSet, unique_utterances
from sepid.speaker.metrics import verification_metrics
from sepid.speaker.scoring import cosine_scores
from sepid.tiny import save_tiny_wavlm


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--data_folder", default=str(REPO / "tests/samples/librispeech-mini/test-other")
    )
    parser.add_argument("--trials_per_utterance", type=int, default=8)
    parser.add_argument("--chunk_seconds", type=float, default=20.0)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument(
        "--out", default=str(REPO / "tests/benchmarks/results/speaker_scoring.json")
    )
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    work = Path(tempfile.mkdtemp(prefix="bench-speaker-"))

    prep = work / "prep"
    prepare_folder(
        args.data_folder,
        prep,
        trials_per_utterance=args.trials_per_utterance,
        n_iden_test=0,
        n_iden_enrol=0,
        valid_ratio=0.0,
    )
    vset = VerificationSet.from_prep("verification", prep, args.data_folder)
    n_utts = len(vset.rows)
    n_trials = len(vset.trials)

    source = save_tiny_wavlm(
        work / "wavlm",
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        intermediate_size=4 * args.hidden,
        conv_dim=(args.hidden,) * 7,
    )
    encoder = WavLMSpeakerEncoder(source, embedding_dim=192).eval()
    recipe = load_script("recipes/speaker/evaluate.py", "speaker_evaluate")
    hparams = {
        "eval_chunk_seconds": args.chunk_seconds,
        "sample_rate": 16000,
        "eval_dataloader_opts": {"batch_size": args.batch_size},
    }
    brain = recipe.EmbeddingBrain(modules={"encoder": encoder}, hparams=hparams)
    labels = torch.tensor([t[0] for t in vset.trials])
    pairs = [(vset.paths[e], vset.paths[t]) for _, e, t in vset.trials]
    chunk = int(args.chunk_seconds * 16000)
    results = {}

    with torch.no_grad():
        # project: the recipe's path (fresh cache file, so everything is embedded)
        start = time.perf_counter()
        dataset = unique_utterances([vset.rows])
        table = brain.embed(dataset, work / "cache.pt", "bench", pretrained_only=False)
        scores = cosine_scores(table, pairs)
        metrics = verification_metrics(scores.numpy(), labels.numpy())
        results["project_seconds"] = time.perf_counter() - start
        results["project_eer"] = metrics["eer"]

        # floor: forward alone over the unique utterances, audio preloaded, same batches
        wavs = {p: read_audio(p, 16000) for p in vset.paths.values()}
        order = sorted(wavs, key=lambda p: -wavs[p].shape[0])
        start = time.perf_counter()
        for i in range(0, len(order), args.batch_size):
            batch = [wavs[p] for p in order[i : i + args.batch_size]]
            longest = batch[0].shape[0]
            padded = torch.zeros(len(batch), longest)
            for j, w in enumerate(batch):
                padded[j, : w.shape[0]] = w
            lens = torch.tensor([w.shape[0] / longest for w in batch])
            embed_in_chunks(encoder, padded, lens, chunk)
        results["floor_seconds"] = time.perf_counter() - start

        # per-trial: read and embed both sides of every trial, as the reference system did
        start = time.perf_counter()
        per_trial, alone = [], {}
        for enrol, test in pairs:
            a = embed_in_chunks(encoder, read_audio(enrol, 16000)[None], torch.ones(1), chunk)
            b = embed_in_chunks(encoder, read_audio(test, 16000)[None], torch.ones(1), chunk)
            per_trial.append(torch.nn.functional.cosine_similarity(a, b).item())
            alone.setdefault(enrol, a[0])
            alone.setdefault(test, b[0])
        per_trial_metrics = verification_metrics(per_trial, labels.numpy())
        results["per_trial_seconds"] = time.perf_counter() - start
        results["per_trial_eer"] = per_trial_metrics["eer"]
        # WavLM Base+ uses group norm and, as Hugging Face advises, no attention mask: padding a
        # batch shifts its shorter utterances' embeddings a little. Measured, not hidden.
        keys = sorted(alone)
        single = torch.nn.functional.normalize(torch.stack([alone[k] for k in keys]), dim=1)
        batched = table.embeddings[table.rows(keys)]
        cos = (single * batched).sum(1)
        results["batched_vs_alone_cosine_min"] = cos.min().item()
        results["batched_vs_alone_cosine_mean"] = cos.mean().item()

    results.update(
        {
            "n_unique_utterances": n_utts,
            "n_trials": n_trials,
            "trials_per_utterance": 2 * n_trials / n_utts,
            "audio_seconds_unique": sum(w.shape[0] for w in wavs.values()) / 16000,
            "chunk_seconds": args.chunk_seconds,
            "model": f"random WavLM, {args.layers} layers, hidden {args.hidden}",
            "speedup_vs_per_trial": results["per_trial_seconds"] / results["project_seconds"],
            "ratio_to_floor": results["project_seconds"] / results["floor_seconds"],
        }
    )
    write_result(args.out, results)


if __name__ == "__main__":
    main()

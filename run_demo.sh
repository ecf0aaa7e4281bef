#!/usr/bin/env bash
# The offline demo: data prep, training and evaluation of the speaker recipe on the LibriSpeech
# sample shipped in tests/samples, with a tiny randomly initialised WavLM (no model hub needed).
# Run from the repository root after `pip install -r requirements.txt`.
set -euo pipefail
cd "$(dirname "$0")"
python recipes/speaker/train.py hparams/demo/wavlm-lora-arcface.yaml "$@"
python recipes/speaker/evaluate.py hparams/demo/wavlm-lora-arcface.yaml "$@"
echo "Results: results/demo-wavlm-lora-arcface/1986/eval/results.md"

#!/usr/bin/env bash
# The offline demo, from the repository root after `pip install -r requirements.txt`:
# 1. the speaker recipe (data prep, training, evaluation of the base and the fine-tuned model) on
#    the LibriSpeech sample shipped in tests/samples, with a tiny randomly initialised WavLM;
# 2. two-speaker mixtures of held-out utterances and the separation evaluation with a tiny
#    randomly initialised SepFormer, identifying the speaker of each separated output;
# 3. joint training of the two (the headline recipe) and its comparison with 2.
# No model hub is needed: the tiny models are built from configs, saved and loaded through the
# same from_pretrained / from_hparams paths as the real ones.
set -euo pipefail
cd "$(dirname "$0")"
python recipes/speaker/train.py hparams/demo/wavlm-lora-arcface.yaml
python recipes/speaker/evaluate.py hparams/demo/wavlm-lora-arcface.yaml
# the trained speaker model leaves its experiment one way: an exported (Hub-ready) folder
python pretrained_interfaces/export.py results/demo-wavlm-lora-arcface/1986 \
    --out results/demo-wavlm-lora-arcface/exported --overwrite
python data_prep/make_mixtures.py \
    --manifest results/demo-wavlm-lora-arcface/1986/prep/iden_test.csv \
    --data_folder tests/samples/librispeech-mini/test-other \
    --save_folder results/demo-mixtures --n_train 0 --n_valid 0 --n_test 12 \
    --train_speakers 0 --valid_speakers 0 --test_speakers 5 --sample_rate 8000
python recipes/separation/evaluate.py hparams/demo/separation-eval.yaml
# 3. the headline recipe: joint separation + speaker ID training, then the comparison
python recipes/joint/train.py hparams/demo/sepformer-wavlm-speaker.yaml
python recipes/joint/evaluate.py hparams/demo/sepformer-wavlm-speaker.yaml
python pretrained_interfaces/export.py results/demo-sepformer-wavlm-speaker/1986 \
    --out results/demo-sepformer-wavlm-speaker/exported --overwrite
echo "Results: results/demo-wavlm-lora-arcface/1986/eval/results.md"
echo "         results/demo-separation-eval/1986/eval/results.md"
echo "         results/demo-sepformer-wavlm-speaker/1986/eval/results.md"

"""Speaker recognition: the WavLM + LoRA encoder, margin, fbank baseline, scoring, verification metrics, evaluation sets, and loading exported speaker models."""

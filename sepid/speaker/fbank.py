"""A training-free speaker embedding: the mean and standard deviation over time of log-mel
filterbanks. The floor any trained speaker model should beat (cosine scoring of these statistics
separates read-speech speakers surprisingly well), scored by the speaker evaluation beside the
trained models (``fbank_baseline: True``)."""

import torch
from speechbrain.lobes.features import Fbank
from torch import nn


class FbankStatsEmbedder(nn.Module):
    """``embed(wavs, wav_lens) -> [B, 2 * n_mels]``: per-utterance mean and standard deviation of
    ``n_mels`` log-mel filterbank energies over the valid frames (no trainable parameter).

    Arguments
    ---------
    sample_rate : int
        Rate of the input waveforms.
    n_mels : int
        Number of mel filters.
    """

    def __init__(self, sample_rate=16000, n_mels=40):
        super().__init__()
        self.sample_rate = sample_rate
        self.n_mels = n_mels
        self.fbank = Fbank(sample_rate=sample_rate, n_mels=n_mels)

    def forward(self, wavs, wav_lens=None):
        """Embeddings ``[B, 2 * n_mels]`` of padded ``wavs [B, T]`` with relative lengths."""
        if wav_lens is None:
            wav_lens = torch.ones(wavs.shape[0], device=wavs.device)
        feats = self.fbank(wavs)  # [B, frames, n_mels]
        n_frames = torch.round(wav_lens * feats.shape[1]).long().clamp(min=1)
        steps = torch.arange(feats.shape[1], device=feats.device)
        mask = (steps[None, :] < n_frames[:, None]).to(feats.dtype).unsqueeze(-1)
        count = mask.sum(1)
        mean = (feats * mask).sum(1) / count
        var = (((feats - mean.unsqueeze(1)) * mask) ** 2).sum(1) / count
        return torch.cat([mean, var.clamp(min=0).sqrt()], dim=1)

    def extra_repr(self):
        return f"sample_rate={self.sample_rate}, n_mels={self.n_mels}"

"""Joint separation + speaker identification: the pieces the joint recipe composes.

``mixture -> SepFormer (encoder, masknet, decoder) -> two estimates @ separator rate
-> differentiable resampling -> WavLM + LoRA speaker encoder -> ArcFace classifier``.
Nothing is detached between the separator and the speaker branch, so the speaker loss shapes the
separator (the reference system detached the separated signal, so its classifier never did).
"""

import torch
import torch.nn.functional as F
from speechbrain.nnet.losses import PitWrapper, cal_si_snr


def separate_with_modules(encoder, masknet, decoder, mix, num_spks=2):
    """SepFormer forward on ``mix [B, T]`` -> ``[B, T, num_spks]`` (as
    ``SepformerSeparation.separate_batch``, differentiable, on the Brain's modules)."""
    mix_w = encoder(mix)
    est_mask = masknet(mix_w)
    mix_w = torch.stack([mix_w] * num_spks)
    sep_h = mix_w * est_mask
    est = torch.cat([decoder(sep_h[i]).unsqueeze(-1) for i in range(num_spks)], dim=-1)
    T = mix.shape[1]
    if est.shape[1] < T:
        return F.pad(est, (0, 0, 0, T - est.shape[1]))
    return est[:, :T, :]


_PIT = PitWrapper(cal_si_snr)


def pit_si_snr_loss(targets, estimates):
    """Permutation-invariant negative SI-SNR per example ``[B]`` and, per example, the output
    index assigned to each target (``assigned[b][i]`` = output carrying target ``i``).

    SpeechBrain's ``PitWrapper(cal_si_snr)`` takes ``(targets, estimates)`` in that order (SI-SNR
    is not symmetric) and returns, per example, the target index matched to each *output*; the
    inverse is taken here so that both conventions of this project read the same way as
    ``sepid.separation.metrics.sisdr.pit_si_sdr``.
    """
    loss, perms = _PIT(targets, estimates)
    assigned = []
    for p in perms:
        inverse = [0] * len(p)
        for out, ref in enumerate(p):
            inverse[ref] = out
        assigned.append(inverse)
    return loss, assigned


def output_labels(assigned, target_labels):
    """Speaker label of every separated output ``[B, n_out]``: output ``assigned[b][i]`` carries
    the label of target ``i`` (``target_labels [B, n_src]``)."""
    labels = torch.empty_like(target_labels)
    for b, outs in enumerate(assigned):
        for ref, out in enumerate(outs):
            labels[b, out] = target_labels[b, ref]
    return labels

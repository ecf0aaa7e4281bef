"""Activation checkpointing (issue 23): the recomputed SepFormer gives the plain one's outputs and
gradients, keeps its weight names, and really recomputes (holds fewer saved activations)."""

import pytest
import torch
from speechbrain.lobes.models import dual_path

from sepid.separation.checkpointing import SBTransformerBlock

SIZES = dict(num_layers=2, d_model=16, nhead=2, d_ffn=32, use_positional_encoding=True)


def masknet(block_class, **kwargs):
    """A tiny Dual_Path_Model as the joint YAML builds it (intra and inter blocks deep-copied)."""
    torch.manual_seed(0)
    intra = block_class(**SIZES, norm_before=True, **kwargs)
    inter = block_class(**SIZES, norm_before=True, **kwargs)
    return dual_path.Dual_Path_Model(
        in_channels=16,
        out_channels=16,
        intra_model=intra,
        inter_model=inter,
        num_layers=2,
        K=10,
        num_spks=2,
        norm="ln",
        linear_layer_after_inter_intra=False,
        skip_around_intra=True,
    )


def step(model, x):
    model.zero_grad()
    out = model(x)
    (out**2).mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_checkpointed_step_equals_the_plain_step(dropout):
    plain = masknet(dual_path.SBTransformerBlock, dropout=dropout).train()
    recomputed = masknet(SBTransformerBlock, dropout=dropout, activation_checkpointing=True).train()
    # same names, so sepformer-whamr's masknet.ckpt loads into it unchanged (strict)
    recomputed.load_state_dict(plain.state_dict(), strict=True)
    assert all(b.activation_checkpointing for b in recomputed.modules() if hasattr(b, "mdl"))
    x = torch.randn(2, 16, 60)
    torch.manual_seed(1)  # dropout draws the same masks: the recomputation restores the RNG
    out_plain, grads_plain = step(plain, x)
    torch.manual_seed(1)
    out_rec, grads_rec = step(recomputed, x)
    assert torch.equal(out_plain, out_rec)
    assert grads_plain.keys() == grads_rec.keys()
    worst = max(
        float((grads_rec[n] - g).abs().max() / g.abs().max().clamp_min(1e-30))
        for n, g in grads_plain.items()
    )
    assert worst <= 1e-6, f"max relative gradient difference {worst:.2e}"


def test_checkpointing_holds_fewer_activations_and_is_off_in_eval():
    def saved_bytes(model):
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        # what the forward keeps for the backward pass (a checkpointed region's own hooks take
        # precedence inside it: only what it keeps across the region reaches `pack`)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = (model(torch.randn(2, 16, 200)) ** 2).mean()
        loss.backward()
        return total

    plain = saved_bytes(masknet(dual_path.SBTransformerBlock).train())
    recomputed = saved_bytes(masknet(SBTransformerBlock, activation_checkpointing=True).train())
    assert recomputed < plain / 3, (recomputed, plain)
    model = masknet(SBTransformerBlock, activation_checkpointing=True).eval()
    with torch.no_grad():
        assert torch.equal(
            model(torch.ones(1, 16, 30)),
            masknet(dual_path.SBTransformerBlock).eval()(torch.ones(1, 16, 30)),
        )


def test_a_bad_value_is_refused():
    with pytest.raises(ValueError, match="activation_checkpointing must be True or False"):
        SBTransformerBlock(**SIZES, activation_checkpointing="yes")


@pytest.mark.parametrize("freeze_backbone", [True, False])
def test_checkpointed_wavlm_gives_the_plain_gradients(tiny_wavlm, freeze_backbone):
    """WavLM's layers recomputed (the speaker recipe's and the joint recipe's option): LoRA on a
    frozen backbone, or the whole backbone fine-tuned, gets the plain step's gradients on a
    padded batch with dropout active, and the input (a separator's output in the joint recipe)
    its gradient too."""
    from sepid.speaker.encoder import WavLMSpeakerEncoder

    def grads(checkpointing):
        torch.manual_seed(0)
        encoder = WavLMSpeakerEncoder(
            tiny_wavlm,
            embedding_dim=16,
            lora_rank=4,
            freeze_backbone=freeze_backbone,
            activation_checkpointing=checkpointing,
        ).train()
        # B = 0 at initialisation would leave LoRA's A without gradient: give B a value
        for name, p in encoder.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.1, generator=torch.Generator().manual_seed(1))
        wavs = torch.randn(2, 8000, generator=torch.Generator().manual_seed(2)).requires_grad_()
        torch.manual_seed(5)  # the dropout masks
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(
            lambda t: saved.append(t.untyped_storage().nbytes()) or t, lambda t: t
        ):
            loss = encoder(wavs, torch.tensor([1.0, 0.55])).pow(2).sum()
        loss.backward()
        named = {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}
        return named, wavs.grad.clone(), sum(saved)

    plain, plain_input, plain_saved = grads(False)
    recomputed, recomputed_input, recomputed_saved = grads(True)
    assert plain.keys() == recomputed.keys() and any("lora_" in n for n in plain)
    assert freeze_backbone or any("feed_forward" in n for n in plain)
    for name, g in plain.items():
        diff = float((recomputed[name] - g).abs().max() / g.abs().max().clamp_min(1e-30))
        assert diff <= 1e-5, f"{name}: relative difference {diff:.2e}"
    assert torch.allclose(recomputed_input, plain_input, rtol=1e-5, atol=1e-7)
    assert recomputed_saved < plain_saved

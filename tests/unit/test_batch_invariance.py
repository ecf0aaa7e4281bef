"""An utterance's embedding does not depend on the batch it is embedded in (issue 18).

WavLM Base/Base+ (``feat_extract_norm="group"``) normalise the first convolution's output over the
whole time axis, and attend over every frame: zero padding in a batch used to change every
embedding (cosine 0.85 median at 2x padding on the demo model). Each utterance here is embedded
alone and inside batches padded up to 8x its length, by the training encoder
(``sepid.speaker.encoder``) and by the exported interface's embedder, on the tiny test WavLM and
on a random model with WavLM Base+'s exact configuration.
"""

import pytest
import torch
import torch.nn.functional as F
from transformers import WavLMConfig, WavLMModel

from pretrained_interfaces.speaker import custom_interface as interface
from sepid.speaker.encoder import WavLMSpeakerEncoder, embed_in_chunks
from sepid.tiny import TINY_WAVLM

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
    conv_dim=(512, 512, 512, 512, 512, 512, 512),
    conv_kernel=(10, 3, 3, 3, 3, 2, 2),
    conv_stride=(5, 2, 2, 2, 2, 2, 2),
    conv_bias=False,
    num_conv_pos_embeddings=128,
    num_conv_pos_embedding_groups=16,
    num_buckets=320,
    max_bucket_distance=800,
    layer_norm_eps=1e-5,
)
MIN_COSINE = 0.99999
MAX_SCORE_DIFF = 1e-5


def speech_like(n_samples, seed):
    """A voiced-looking random signal (harmonics under a slow envelope, a little noise): enough
    structure that the embeddings of different signals differ."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n_samples) / 16000
    f0 = 90 + 150 * torch.rand(1, generator=g)
    wav = sum(torch.sin(2 * torch.pi * f0 * k * t) / k for k in range(1, 8))
    envelope = 0.5 + 0.5 * torch.sin(2 * torch.pi * 3 * t + 6 * torch.rand(1, generator=g))
    return 0.1 * wav * envelope + 0.01 * torch.randn(n_samples, generator=g)


def padded_batches(lengths, factors, seed=0):
    """The signals alone and, for each padding factor, one batch of all of them padded to
    ``factor`` x the shortest's length (at least the longest)."""
    signals = [speech_like(n, seed + i) for i, n in enumerate(lengths)]
    batches = []
    for factor in factors:
        total = max(max(lengths), int(factor * min(lengths)))
        wavs = torch.zeros(len(signals), total)
        for i, s in enumerate(signals):
            wavs[i, : len(s)] = s
        batches.append((factor, wavs, torch.tensor(lengths, dtype=torch.float) / total))
    return signals, batches


def assert_batch_invariant(embed, lengths, factors=(1, 2, 4, 8)):
    """``embed(wavs, wav_lens) -> [B, D]`` gives each signal, in every padded batch, its
    embedding alone: cosine >= MIN_COSINE, and every pairwise trial score within
    MAX_SCORE_DIFF."""
    signals, batches = padded_batches(lengths, factors)
    with torch.no_grad():
        alone = F.normalize(torch.cat([embed(s[None], torch.ones(1)) for s in signals]), dim=-1)
        for factor, wavs, lens in batches:
            batched = F.normalize(embed(wavs, lens), dim=-1)
            cosine = (batched * alone).sum(-1)
            assert cosine.min() >= MIN_COSINE, (factor, cosine.tolist())
            scores_diff = (batched @ batched.T - alone @ alone.T).abs().max()
            assert scores_diff <= MAX_SCORE_DIFF, (factor, float(scores_diff))


def trained_like(module, seed=0):
    """Gives LoRA B and the head values (a fresh LoRA is the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if ".lora_B" in name or not name.startswith("backbone."):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return module.eval()


@pytest.mark.parametrize(
    "options",
    [
        {"pooling": "mean"},
        {"pooling": "attentive"},
        {"pooling": "mean", "layer_weighting": True, "normalize_waveform": True},
    ],
    ids=["mean", "attentive", "layers+norm"],
)
def test_training_encoder_padded_equals_alone(tiny_wavlm, options):
    encoder = trained_like(WavLMSpeakerEncoder(tiny_wavlm, embedding_dim=32, **options))
    assert_batch_invariant(encoder, [3200, 5000, 8000])


def test_base_model_baseline_padded_equals_alone(tiny_wavlm):
    """The ``pretrained_only`` baseline (mean of the base model's last hidden states)."""
    encoder = trained_like(WavLMSpeakerEncoder(tiny_wavlm, embedding_dim=32))
    assert_batch_invariant(lambda w, n: encoder(w, n, pretrained_only=True), [3200, 5000, 8000])


def test_chunked_batch_cuts_each_utterance_where_it_is_cut_alone(tiny_wavlm):
    """Long utterances are embedded in chunks: each one's chunks are its own (cut as if alone),
    not the batch's (a 16,001-sample file in a 20,000-sample batch got a 1-sample chunk)."""
    encoder = trained_like(WavLMSpeakerEncoder(tiny_wavlm, embedding_dim=32))
    chunk = 4000

    def embed(wavs, lens):
        return embed_in_chunks(encoder, wavs, lens, chunk)

    assert_batch_invariant(embed, [3000, 8001, 10000, 12500], factors=(1, 2, 4))


def test_unpadded_input_is_the_stock_model_bit_for_bit(tiny_wavlm):
    """No padding: exactly the stock ``WavLMModel`` (pretrained models and earlier exports keep
    their embeddings)."""
    encoder = WavLMSpeakerEncoder(tiny_wavlm, embedding_dim=32, lora_rank=0).eval()
    stock = WavLMModel.from_pretrained(tiny_wavlm).eval()
    stock.requires_grad_(False)  # as the encoder's (frozen weights take other kernels)
    wavs = torch.stack([speech_like(12000, 1), speech_like(12000, 2)])
    with torch.no_grad():
        expected = stock(wavs).last_hidden_state
        got = encoder.hidden_states(wavs, torch.ones(2))
    assert torch.equal(got, expected)


def interface_embedder(config, **options):
    torch.manual_seed(0)
    return trained_like(interface.WavLMSpeakerEmbedder(config, embedding_dim=32, **options))


@pytest.mark.parametrize("pooling", ["mean", "attentive"])
def test_interface_embedder_padded_equals_alone(pooling):
    embedder = interface_embedder(TINY_WAVLM, pooling=pooling)

    def embed(wavs, lens):
        return interface.embed_in_chunks(embedder, wavs, lens, 6000)

    assert_batch_invariant(embed, [3200, 5000, 8000])


def test_base_plus_shaped_model_padded_equals_alone():
    """A random model with WavLM Base+'s configuration (12 layers, 768 wide, group norm, 128-tap
    positional convolution): short signals, padded up to 8x."""
    assert WavLMConfig(**BASE_PLUS).feat_extract_norm == "group"
    embedder = interface_embedder(BASE_PLUS)
    assert_batch_invariant(embedder, [2400, 4000], factors=(8,))


def test_masked_group_norm_trains_through_its_statistics():
    """With a trained feature encoder (``freeze_feature_encoder: False``) the masked GroupNorm
    takes each row's own GroupNorm (gradient through the statistics); it equals the one-pass
    inference form."""
    torch.manual_seed(0)
    config = WavLMConfig(**TINY_WAVLM)
    layer = interface.MaskedGroupNormConvLayer(config, layer_id=0)
    layer.layer_norm.weight.data.uniform_(0.5, 1.5)
    layer.layer_norm.bias.data.uniform_(-0.5, 0.5)
    wavs = torch.randn(3, 4000)
    layer.valid_samples = torch.tensor([4000, 2500, 1000])
    with torch.no_grad():
        inference = layer(wavs[:, None])
    trained = layer(wavs[:, None].requires_grad_())
    trained.sum().backward()
    frames = [799, 499, 199]  # (samples - 10) // 5 + 1
    for b, n in enumerate(frames):
        torch.testing.assert_close(trained[b, :, :n], inference[b, :, :n])
    assert layer.conv.weight.grad.abs().sum() > 0

"""The WavLM + LoRA speaker encoder, built from a tiny random WavLM saved to a temp folder and
loaded through the same ``from_pretrained`` path as ``microsoft/wavlm-base-plus``."""

import copy
import logging
import math

import pytest
import torch
from speechbrain.nnet.losses import AdditiveAngularMargin, LogSoftmaxWrapper
from torch import nn

from sepid.speaker.encoder import (
    WavLMSpeakerEncoder,
    embed_in_chunks,
    log_trainable_parameters,
)
from sepid.speaker.lora import lora_disabled, lora_modules, lora_state_dict, merge_lora
from sepid.speaker.margin import MarginScheduler, set_aam_margin
from sepid.tiny import save_tiny_wavlm
from sepid.training.schedules import WarmupExpDecay, optimizer_steps_per_epoch

ATTENTION = ["q_proj", "k_proj", "v_proj", "out_proj"]


@pytest.fixture(scope="module")
def wavlm_dir(tmp_path_factory):
    return save_tiny_wavlm(tmp_path_factory.mktemp("tiny-wavlm"))


def make_encoder(source, **kwargs):
    torch.manual_seed(0)
    encoder = WavLMSpeakerEncoder(source, embedding_dim=16, **kwargs)
    return encoder.eval()


def randomise_lora_b(encoder):
    """A trained adapter: B is zero at initialisation, so give it values."""
    torch.manual_seed(1)
    for _, lora in lora_modules(encoder):
        nn.init.normal_(lora.lora_B, std=0.2)


@pytest.fixture
def batch():
    torch.manual_seed(2)
    return torch.randn(2, 8000), torch.tensor([1.0, 0.7])


def test_only_lora_and_head_train(wavlm_dir):
    encoder = make_encoder(wavlm_dir, pooling="attentive", layer_weighting=True)
    trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
    for name in trainable:
        assert (
            ".lora_A" in name
            or ".lora_B" in name
            or name.startswith(("pool.", "projection.", "layer_weights"))
        ), name
    n_layers = encoder.backbone.config.num_hidden_layers
    assert sum(".lora_" in n for n in trainable) == 2 * len(ATTENTION) * n_layers
    frozen = [n for n, p in encoder.named_parameters() if n.startswith("backbone.")]
    assert all(
        not p.requires_grad
        for n, p in encoder.named_parameters()
        if n in frozen and ".lora_" not in n
    )


def test_lora_identity_at_init(wavlm_dir, batch):
    encoder = make_encoder(wavlm_dir)
    with torch.no_grad():
        with lora_disabled(encoder.backbone):
            base = encoder(*batch)
        adapted = encoder(*batch)
    torch.testing.assert_close(base, adapted)


@pytest.mark.parametrize("targets", [ATTENTION, ["intermediate_dense", "output_dense"]])
def test_every_lora_parameter_changes_output_and_gets_gradient(wavlm_dir, batch, targets):
    """The trap: HF's WavLMAttention reads q/k/v/out_proj.weight directly, bypassing module
    wrappers. The parametrization must act on every target all the same."""
    encoder = make_encoder(wavlm_dir, lora_targets=targets)
    randomise_lora_b(encoder)
    with torch.no_grad():
        reference = encoder(*batch)
    for name, lora in lora_modules(encoder):
        for param in (lora.lora_A, lora.lora_B):
            saved = param.detach().clone()
            with torch.no_grad():
                # random, not constant: a uniform shift of A is invisible after LayerNorm
                param.add_(0.5 * torch.randn_like(param))
                changed = encoder(*batch)
                param.copy_(saved)
            assert (changed - reference).abs().max() > 1e-4, f"{name} does not act on the output"
    encoder.zero_grad()
    encoder(*batch).pow(2).sum().backward()
    for name, lora in lora_modules(encoder):
        assert lora.lora_A.grad is not None and lora.lora_A.grad.abs().sum() > 0, name
        assert lora.lora_B.grad is not None and lora.lora_B.grad.abs().sum() > 0, name


def test_lora_b_gets_gradient_at_initialisation(wavlm_dir, batch):
    """At step one (B = 0) the gradient reaches every B: training can start."""
    encoder = make_encoder(wavlm_dir)
    encoder(*batch).pow(2).sum().backward()
    for name, lora in lora_modules(encoder):
        assert lora.lora_B.grad.abs().sum() > 0, name


def test_module_wrapper_on_attention_is_bypassed(wavlm_dir, batch):
    """Documents the trap this project works around (checked with transformers 5.x): replacing
    ``q_proj`` by a module that would change its output leaves WavLM's output unchanged. If this
    starts failing, HF now calls the projection modules and peft would work as well."""
    encoder = make_encoder(wavlm_dir, lora_rank=0)
    with torch.no_grad():
        reference = encoder(*batch)

    class Shifted(nn.Module):
        def __init__(self, linear):
            super().__init__()
            self.linear = linear
            self.weight, self.bias = linear.weight, linear.bias

        def forward(self, x):
            return self.linear(x) + 10.0

    attention = encoder.backbone.encoder.layers[0].attention
    attention.q_proj = Shifted(attention.q_proj)
    with torch.no_grad():
        bypassed = encoder(*batch)
    torch.testing.assert_close(reference, bypassed)


@pytest.mark.parametrize("how", ["target_modules", "target_parameters", "control"])
def test_peft_lora_on_wavlm_attention_is_bypassed(wavlm_dir, how):
    """Why LoRA here is a weight parametrization and not peft: peft's LoRA on WavLM's attention
    projections, with non-zero adapters, leaves the output unchanged, whether it wraps the
    modules (``target_modules``) or their weights (``target_parameters``). Checked against the
    installed transformers and peft (the ``dev`` extra); if this starts failing, a release now
    routes the projections through what peft adapts, and peft is worth another look."""
    peft = pytest.importorskip("peft")
    from transformers import WavLMModel

    model = WavLMModel.from_pretrained(wavlm_dir).eval()
    wav = torch.randn(2, 16000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(wav).last_hidden_state
    targets = ["q_proj", "k_proj", "v_proj", "out_proj"]
    if how == "control":  # the feed-forward linears are called as modules: there peft acts
        config = peft.LoraConfig(
            r=4, target_modules=["intermediate_dense"], init_lora_weights=False
        )
        with torch.no_grad():
            adapted = peft.get_peft_model(model, config)(wav).last_hidden_state
        assert (adapted - reference).abs().max() > 1e-2
        return
    if how == "target_modules":
        config = peft.LoraConfig(r=4, target_modules=targets, init_lora_weights=False)
    else:
        params = [f"{t}.weight" for t in targets]
        config = peft.LoraConfig(r=4, target_parameters=params, init_lora_weights=False)
    adapted = peft.get_peft_model(model, config)
    lora_b = [p for n, p in adapted.named_parameters() if "lora_B" in n]
    assert lora_b and all(bool((p != 0).any()) for p in lora_b)  # the adapters would act
    with torch.no_grad():
        bypassed = adapted(wav).last_hidden_state
    # (equal up to float rounding: peft's wrapper changes the order of a few additions)
    torch.testing.assert_close(reference, bypassed, atol=1e-5, rtol=1e-4)


def test_merge_lora_matches_adapted_model(wavlm_dir, batch):
    encoder = make_encoder(wavlm_dir)
    randomise_lora_b(encoder)
    with torch.no_grad():
        adapted = encoder(*batch)
        merge_lora(encoder.backbone)
        merged = encoder(*batch)
    torch.testing.assert_close(adapted, merged, rtol=1e-5, atol=1e-5)
    assert not list(lora_modules(encoder))
    assert not lora_state_dict(encoder)


def test_merging_a_copy_leaves_the_live_model_intact(wavlm_dir, batch):
    """Exporting merges a deep copy; torch's remove_parametrizations would strip ``weight`` from
    the class the copy shares with the original (issue 10, row 13)."""
    encoder = make_encoder(wavlm_dir)
    randomise_lora_b(encoder)
    with torch.no_grad():
        before = encoder(*batch)
        merged = merge_lora(copy.deepcopy(encoder))
        after = encoder(*batch)  # the original still has its weights and its LoRA
        from_copy = merged(*batch)
    torch.testing.assert_close(before, after, rtol=0, atol=0)
    torch.testing.assert_close(before, from_copy, rtol=1e-5, atol=1e-5)
    assert (
        len(list(lora_modules(encoder)))
        == len(ATTENTION) * encoder.backbone.config.num_hidden_layers
    )
    assert not list(lora_modules(merged))


def test_pretrained_only_is_mean_of_base_hidden_states(wavlm_dir, batch):
    encoder = make_encoder(wavlm_dir)
    randomise_lora_b(encoder)
    wavs, lens = batch
    samples = torch.round(lens * wavs.shape[1]).long().tolist()
    with torch.no_grad():
        baseline = encoder(wavs, lens, pretrained_only=True)
        with lora_disabled(encoder.backbone):  # each utterance alone, unpadded
            expected = torch.cat(
                [
                    encoder.backbone(wavs[i : i + 1, :n]).last_hidden_state.mean(1)
                    for i, n in enumerate(samples)
                ]
            )
    assert baseline.shape == (2, encoder.backbone.config.hidden_size)
    torch.testing.assert_close(baseline, expected)


def test_checkpoint_holds_only_trainable_state_and_round_trips(wavlm_dir, batch, tmp_path):
    encoder = make_encoder(wavlm_dir)
    randomise_lora_b(encoder)
    encoder._save(tmp_path / "encoder.ckpt")
    saved = torch.load(tmp_path / "encoder.ckpt", weights_only=True)
    assert saved["base_model"] == str(wavlm_dir)
    assert all(not k.startswith("backbone.") or ".lora_" in k for k in saved["state"])
    fresh = make_encoder(wavlm_dir)
    fresh._load(tmp_path / "encoder.ckpt")
    with torch.no_grad():
        torch.testing.assert_close(encoder(*batch), fresh(*batch))
    other = make_encoder(wavlm_dir, pooling="attentive")
    with pytest.raises(ValueError, match="does not match"):
        other._load(tmp_path / "encoder.ckpt")


def test_embed_in_chunks_is_length_weighted_mean_of_chunks(wavlm_dir):
    encoder = make_encoder(wavlm_dir)
    torch.manual_seed(3)
    wav = torch.randn(1, 10000)
    chunk = 4000  # chunks 0-4000, 4000-8000, 8000-10000 (2000 >= chunk / 2 stays separate)
    with torch.no_grad():
        got = embed_in_chunks(encoder, wav, torch.ones(1), chunk)
        parts = [
            encoder(wav[:, a:b]) * (b - a) for a, b in [(0, 4000), (4000, 8000), (8000, 10000)]
        ]
        expected = sum(parts) / 10000
        whole = embed_in_chunks(encoder, wav, torch.ones(1), 20000)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(whole, encoder(wav))


def test_set_aam_margin_equals_fresh_loss():
    torch.manual_seed(4)
    cosine = torch.rand(6, 5) * 2 - 1
    targets = torch.nn.functional.one_hot(torch.arange(6) % 5, 5).float()
    loss = LogSoftmaxWrapper(AdditiveAngularMargin(margin=0.0, scale=30.0))
    set_aam_margin(loss, 0.3)
    fresh = AdditiveAngularMargin(margin=0.3, scale=30.0)
    torch.testing.assert_close(loss.loss_fn(cosine, targets), fresh(cosine, targets))


def test_margin_schedule():
    schedule = MarginScheduler(final=0.3, hold_steps=10, ramp_steps=20)
    assert schedule.value(0) == 0.0
    assert schedule.value(9) == 0.0
    assert math.isclose(schedule.value(20), 0.15)
    assert schedule.value(30) == 0.3
    assert schedule.value(10_000) == 0.3


def test_margin_schedule_in_fractions_of_the_run():
    schedule = MarginScheduler(final=0.3, hold_fraction=0.1, ramp_fraction=0.2)
    with pytest.raises(ValueError, match="run's length is unknown"):
        schedule.value(0)
    schedule.set_total_steps(100)
    assert (schedule.hold_steps, schedule.ramp_steps) == (10, 20)
    assert schedule.value(9) == 0.0 and math.isclose(schedule.value(20), 0.15)
    # steps win over fractions when both are given (a command-line override of the steps)
    fixed = MarginScheduler(final=0.3, hold_steps=5, hold_fraction=0.5, total_steps=100)
    assert fixed.hold_steps == 5 and fixed.ramp_steps == 0 and fixed.value(5) == 0.3


def test_lr_schedule_warmup_and_decay_in_fractions():
    schedule = WarmupExpDecay(lr=1.0, decay_factor=0.01, warmup_fraction=0.1)
    schedule.set_total_steps(110)
    assert schedule.warmup_length == 11
    assert math.isclose(schedule.value(0), 1 / 11)  # the first step does not run at rate 0
    assert math.isclose(schedule.value(10), 1.0)
    assert math.isclose(schedule.value(11), 1.0)
    assert math.isclose(schedule.value(11 + 49.5), 0.1)  # half way in log scale
    assert math.isclose(schedule.value(110), 0.01) and math.isclose(schedule.value(10**6), 0.01)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=123.0)
    assert math.isclose(schedule(opt, 110), 0.01) and opt.param_groups[0]["lr"] == schedule(
        opt, 110
    )
    same = WarmupExpDecay(lr=1.0, decay_factor=0.01, warmup_steps=11, total_steps=110)
    assert [same.value(s) for s in range(120)] == [schedule.value(s) for s in range(120)]
    with pytest.raises(ValueError, match="warmup_fraction"):
        WarmupExpDecay(lr=1.0)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (dict(n_items=100, batch_size=8), 13),
        (dict(n_items=100, batch_size=8, drop_last=True), 12),
        (dict(n_items=100, batch_size=8, drop_last=True, world_size=2), 6),
        (dict(n_items=100, batch_size=8, grad_accumulation=4), 4),
        (dict(n_items=3, batch_size=8, drop_last=True), 1),
    ],
)
def test_optimizer_steps_per_epoch(kwargs, expected):
    assert optimizer_steps_per_epoch(**kwargs) == expected


def test_full_fine_tuning_trains_and_checkpoints_the_backbone(wavlm_dir, batch, tmp_path):
    encoder = make_encoder(wavlm_dir, freeze_backbone=False)
    trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
    assert any(n.startswith("backbone.encoder.layers.") and ".lora_" not in n for n in trainable)
    # the convolutional feature encoder stays frozen unless asked
    assert not any(n.startswith("backbone.feature_extractor.") for n in trainable)
    assert any(
        n.startswith("backbone.feature_extractor.")
        for n, p in make_encoder(
            wavlm_dir, freeze_backbone=False, freeze_feature_encoder=False
        ).named_parameters()
        if p.requires_grad
    )
    # a trained backbone: change a base weight (not LoRA), save, load into a fresh encoder
    with torch.no_grad():
        encoder.backbone.encoder.layers[0].feed_forward.output_dense.weight.add_(0.5)
        randomise_lora_b(encoder)
    wavs, lens = batch
    expected = encoder(wavs, lens)
    encoder._save(tmp_path / "enc.ckpt")
    fresh = make_encoder(wavlm_dir, freeze_backbone=False)
    assert not torch.allclose(fresh(wavs, lens), expected)
    fresh._load(tmp_path / "enc.ckpt")
    torch.testing.assert_close(fresh(wavs, lens), expected)
    # a frozen encoder refuses it (it would drop the trained backbone), and vice versa
    with pytest.raises(ValueError, match="freeze_backbone=False"):
        make_encoder(wavlm_dir)._load(tmp_path / "enc.ckpt")
    make_encoder(wavlm_dir)._save(tmp_path / "frozen.ckpt")
    with pytest.raises(ValueError, match="freeze_backbone=True"):
        fresh._load(tmp_path / "frozen.ckpt")


def test_parameter_log_tells_whether_the_backbone_trains(wavlm_dir, caplog):
    for frozen, says in ((True, "backbone frozen"), (False, "backbone fine-tuned")):
        modules = nn.ModuleDict({"encoder": make_encoder(wavlm_dir, freeze_backbone=frozen)})
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="sepid.speaker.encoder"):
            trainable, total = log_trainable_parameters(modules)
        assert says in caplog.text and "LoRA adapters" in caplog.text
        assert ("frozen: feature_extractor" in caplog.text) == (not frozen)
        assert (trainable > total // 2) == (not frozen)

"""The joint recipe's ``activation_checkpointing`` option (issue 23), through the recipe's own
JointBrain and YAML: a step with it equals a step without it, and FiniteBrain's skip still holds."""

import pytest
import speechbrain as sb
import torch

from sepid.separation.checkpointing import SBTransformerBlock
from tests.recipes.test_joint_recipe import joint_brain, speaker_options


@pytest.fixture
def options(speaker_experiment, exported_speaker):
    return speaker_options(speaker_experiment, exported_speaker)


def one_step(joint_recipe, options, folder, **overrides):
    brain, batch = joint_brain(joint_recipe, options, folder, speed_perturb=False, **overrides)
    brain.train_set = None
    brain.on_fit_start()
    brain.on_stage_start(sb.Stage.TRAIN, 1)
    torch.manual_seed(3)
    loss = brain.fit_batch(batch)
    return brain, float(loss)


def test_a_checkpointed_joint_step_equals_the_plain_one(options, tmp_path, joint_recipe):
    plain, loss_plain = one_step(joint_recipe, options, tmp_path / "plain")
    recomputed, loss_rec = one_step(
        joint_recipe, options, tmp_path / "recomputed", activation_checkpointing=True
    )
    blocks = [m for m in recomputed.modules.masknet.modules() if isinstance(m, SBTransformerBlock)]
    assert blocks and all(b.activation_checkpointing for b in blocks)
    assert recomputed.optimizer_step == plain.optimizer_step == 1
    assert loss_rec == loss_plain
    after_plain = plain.modules.state_dict()
    worst = 0.0
    for name, value in recomputed.modules.state_dict().items():
        if value.is_floating_point():
            scale = float(after_plain[name].abs().max().clamp_min(1e-30))
            worst = max(worst, float((value - after_plain[name]).abs().max()) / scale)
    assert worst <= 1e-6, f"weights after one step differ by {worst:.2e} (relative)"


def test_the_finite_brain_skip_holds_with_checkpointing(options, tmp_path, joint_recipe):
    brain, batch = joint_brain(
        joint_recipe, options, tmp_path, loss_lower_lim=1000.0, activation_checkpointing=True
    )
    brain.train_set = None
    brain.on_fit_start()
    brain.on_stage_start(sb.Stage.TRAIN, 1)
    before = {k: v.clone() for k, v in brain.modules.state_dict().items()}
    assert not torch.isfinite(brain.fit_batch(batch))
    assert brain.nonfinite_skipped == 1 and brain.optimizer_step == 0
    assert all(torch.equal(v, before[k]) for k, v in brain.modules.state_dict().items())

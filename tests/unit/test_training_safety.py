"""The shared training safety net: non-finite steps skipped (``sepid.training.brain.FiniteBrain``),
checkpoints trusted only when complete and never written non-finite
(``sepid.training.checkpoints.AtomicCheckpointer``), on a tiny linear model."""

import random
import shutil

import numpy as np
import pytest
import speechbrain as sb
import torch
from speechbrain.utils.checkpoints import Checkpointer
from speechbrain.utils.epoch_loop import EpochCounter

from sepid.training.brain import FiniteBrain, check_trainable_data
from sepid.training.checkpoints import AtomicCheckpointer, RandomStates, incomplete_reason


class LinearBrain(FiniteBrain):
    def compute_forward(self, batch, stage):
        return self.modules.model(batch[0])

    def compute_objectives(self, predictions, batch, stage):
        return ((predictions - batch[1]) ** 2).mean()


def make_brain(tmp_path, **run_opts):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    counter = EpochCounter(10)
    checkpointer = AtomicCheckpointer(tmp_path, {"model": model, "counter": counter})
    brain = LinearBrain(
        modules={"model": model},
        opt_class=lambda p: torch.optim.AdamW(p, lr=0.1, weight_decay=0.1),
        hparams={"epoch_counter": counter},
        run_opts={"noprogressbar": True, **run_opts},
        checkpointer=checkpointer,
    )
    brain.on_fit_start()
    brain.on_stage_start(sb.Stage.TRAIN, 1)
    return brain


def batch(bad=False):
    x = torch.ones(4, 3)
    if bad:
        x[1, 1] = float("nan")
    return x, torch.zeros(4, 1)


def weights(brain):
    return {k: v.clone() for k, v in brain.modules.state_dict().items()}


def test_a_non_finite_batch_does_not_step(tmp_path):
    brain = make_brain(tmp_path)
    brain.fit_batch(batch())  # one good step: AdamW has momentum, weight decay
    before = weights(brain)
    loss = brain.fit_batch(batch(bad=True))
    assert not torch.isfinite(loss)
    after = weights(brain)
    assert all(torch.equal(before[k], after[k]) for k in before)  # not even weight decay
    assert brain.nonfinite_skipped == 1 and brain.optimizer_step == 1
    assert all(p.grad is None for p in brain.modules.parameters())  # NaN gradients dropped
    brain.fit_batch(batch())
    assert brain.optimizer_step == 2
    assert all(torch.isfinite(v).all() for v in weights(brain).values())


def test_a_non_finite_micro_batch_drops_the_whole_accumulated_step(tmp_path):
    brain = make_brain(tmp_path, grad_accumulation_factor=2)
    before = weights(brain)
    for step, bad in ((1, True), (2, False)):  # the NaN one, then the one that would step
        brain.step = step
        brain.fit_batch(batch(bad))
    assert brain.nonfinite_skipped == 1 and brain.optimizer_step == 0
    assert all(torch.equal(v, before[k]) for k, v in weights(brain).items())


def test_patience_is_speechbrains(tmp_path):
    brain = make_brain(tmp_path, nonfinite_patience=2)
    brain.fit_batch(batch(True))
    brain.fit_batch(batch(True))
    with pytest.raises(ValueError, match="patience is exhausted"):
        brain.fit_batch(batch(True))


def test_non_finite_validation_is_not_checkpointed(tmp_path):
    brain = make_brain(tmp_path)
    brain.on_stage_start(sb.Stage.VALID, 1)
    brain.evaluate_batch(batch(bad=True), sb.Stage.VALID)
    # SpeechBrain's running average drops the NaN: the stage loss it reports can look fine
    assert not brain.checkpoint_if_finite(0.0, {"error": 0.1}, meta={"error": 0.1})
    assert not list(tmp_path.glob("CKPT+*"))
    brain.on_stage_start(sb.Stage.VALID, 1)
    assert not brain.checkpoint_if_finite(0.3, {"error": float("nan")}, meta={"error": 0.1})
    brain.evaluate_batch(batch(), sb.Stage.VALID)
    assert brain.checkpoint_if_finite(0.3, {"error": 0.1}, meta={"error": 0.1})
    assert len(list(tmp_path.glob("CKPT+*"))) == 1


def test_non_finite_weights_are_never_saved(tmp_path):
    brain = make_brain(tmp_path)
    with torch.no_grad():
        brain.modules.model.weight[0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match="non-finite weights"):
        brain.checkpointer.save_checkpoint()
    assert not list(tmp_path.glob("CKPT+*"))


def break_yaml_empty(ckpt):
    (ckpt / "CKPT.yaml").write_text("")


def break_model_empty(ckpt):
    (ckpt / "model.ckpt").write_bytes(b"")


def break_model_truncated(ckpt):
    data = (ckpt / "model.ckpt").read_bytes()
    (ckpt / "model.ckpt").write_bytes(data[: len(data) // 2])


def break_model_missing(ckpt):
    (ckpt / "model.ckpt").unlink()


@pytest.mark.parametrize(
    "damage", [break_yaml_empty, break_model_empty, break_model_truncated, break_model_missing]
)
def test_an_incomplete_checkpoint_is_set_aside(tmp_path, damage):
    """What SpeechBrain's own Checkpointer leaves when killed mid-save (it writes CKPT.yaml
    first): recovery sets it aside and loads the last complete checkpoint instead of failing."""
    model = torch.nn.Linear(3, 1)
    counter = EpochCounter(10)
    plain = Checkpointer(tmp_path, {"model": model, "counter": counter})
    counter.current = 1
    good = plain.save_checkpoint(meta={"epoch": 1})
    counter.current = 2
    newest = plain.save_checkpoint(meta={"epoch": 2})
    damage(newest.path)
    checkpointer = AtomicCheckpointer(tmp_path, {"model": model, "counter": counter})
    recovered = checkpointer.recover_if_possible()
    assert recovered.path == good.path and counter.current == 1
    aside = tmp_path / f"INCOMPLETE-{newest.path.name}"
    assert aside.is_dir() and not newest.path.exists()
    assert [c.path for c in checkpointer.list_checkpoints()] == [good.path]


def test_a_save_is_invisible_until_complete(tmp_path):
    """The meta file gets its name only after every file is written."""
    model = torch.nn.Linear(3, 1)
    seen = []

    class Watcher(AtomicCheckpointer):
        def _save_checkpoint_metafile(self, fpath, meta_to_include={}, end_of_epoch=True):  # noqa: B006
            meta = super()._save_checkpoint_metafile(fpath, meta_to_include, end_of_epoch)
            seen.append(list(self.list_checkpoints()))  # what a reader would see mid-save
            return meta

    ckpt = Watcher(tmp_path, {"model": model}).save_checkpoint()
    assert seen == [[]]
    assert incomplete_reason(ckpt.path, ["model"]) is None
    shutil.rmtree(ckpt.path)


def test_data_that_cannot_train_is_refused():
    opts = {"batch_size": 8, "drop_last": True}
    with pytest.raises(ValueError, match="at least 2"):
        check_trainable_data(n_classes=1, n_train_items=50, loader_options=opts, where="t.csv")
    with pytest.raises(ValueError, match="fewer than batch_size 8"):
        check_trainable_data(n_classes=5, n_train_items=7, loader_options=opts, where="t.csv")
    check_trainable_data(n_classes=5, n_train_items=7, loader_options={"batch_size": 8}, where="")


def draws():
    """One draw of each generator RandomStates covers."""
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_random_states_resume_the_same_draws(tmp_path):
    """A checkpoint with RandomStates gives, after recovery, the draws that followed the save
    (issue 22 row 8; the recipes' end-to-end check is tests/recipes/test_resume_exact.py)."""
    states = RandomStates()
    checkpointer = AtomicCheckpointer(tmp_path, {"random_states": states})
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    draws()
    checkpointer.save_checkpoint()
    expected = draws()
    draws()  # the generators move on (a killed run, a new process seeded again...)
    assert AtomicCheckpointer(tmp_path, {"random_states": states}).recover_if_possible()
    assert draws() == expected


def test_a_checkpoint_without_random_states_still_resumes(tmp_path, caplog):
    """Checkpoints written before the states were saved are not set aside: the run resumes,
    warned that it is not an exact continuation."""
    model, counter = torch.nn.Linear(2, 2), EpochCounter(3)
    AtomicCheckpointer(tmp_path, {"model": model, "counter": counter}).save_checkpoint()
    new = AtomicCheckpointer(
        tmp_path, {"model": model, "counter": counter, "random_states": RandomStates()}
    )
    assert new.recover_if_possible() is not None
    assert "holds no random states" in caplog.text
    assert not list(tmp_path.glob("INCOMPLETE-*"))

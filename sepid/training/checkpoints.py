"""A SpeechBrain ``Checkpointer`` that trusts a checkpoint only when it is complete.

SpeechBrain 1.1.2's ``Checkpointer.save_checkpoint`` writes ``CKPT.yaml`` first and the ``.ckpt``
files after it, and treats any ``CKPT+*`` folder holding a ``CKPT.yaml`` as a checkpoint. A process
killed in between leaves a folder that ``recover_if_possible`` picks and then fails on (empty YAML:
``TypeError`` in ``ckpt_recency``; 0-byte ``.ckpt``: ``EOFError``; missing file: ``KeyError``),
on every rerun, until the folder is deleted by hand.

:class:`AtomicCheckpointer` changes two things (and, under DDP, waits for the rename) and
nothing else:

- **Writing**: the meta file is written under a temporary name and renamed to ``CKPT.yaml`` only
  after every ``.ckpt`` file is written (a rename is atomic), so SpeechBrain never sees a folder
  being written as a checkpoint.
- **Reading** (every ``list_checkpoints``, hence every recovery, every ``find_checkpoint`` and the
  pruning of ``save_and_keep_only``): a checkpoint folder is used only if :func:`incomplete_reason`
  finds nothing wrong; otherwise the main process renames it ``INCOMPLETE-<name>`` (out of
  SpeechBrain's ``CKPT+`` namespace, kept for inspection, never deleted) and logs why, and the run
  resumes from the last complete checkpoint.

Saving also refuses a model whose weights are not finite, so a poisoned model can never become
the checkpoint a rerun resumes.

:class:`RandomStates` is the recoverable that makes a resumed run the run it would have been:
SpeechBrain checkpoints the modules, optimizer, schedulers and epoch counter but not the
random-number generators, so a run resumed at the end of epoch ``k`` drew other crops,
augmentations and dropout masks than the uninterrupted run from epoch ``k + 1`` on.
"""

import functools
import os
import random
import zipfile
from pathlib import Path

import numpy as np
import torch
import yaml
from speechbrain.utils.checkpoints import (
    CKPT_PREFIX,
    METAFNAME,
    PARAMFILE_EXT,
    Checkpointer,
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)
from speechbrain.utils.distributed import ddp_barrier, if_main_process
from speechbrain.utils.logger import get_logger

from sepid.training.distributed import gather_objects

logger = get_logger(__name__)

PENDING_META = METAFNAME + ".pending"
SET_ASIDE_PREFIX = "INCOMPLETE-"


def _file_problem(path):
    """Why the saved file ``path`` cannot be a complete save, or None."""
    if not path.is_file():
        return f"{path.name} is missing"
    size = path.stat().st_size
    if size == 0:
        return f"{path.name} is empty"
    with open(path, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"
    # torch.save writes a zip archive whose directory is at the end: a cut file has none
    if is_zip and not zipfile.is_zipfile(path):
        return f"{path.name} is truncated"
    return None


def incomplete_reason(folder, required_names):
    """Why ``folder`` is not a complete checkpoint holding a file for each of
    ``required_names``, or None when it is one."""
    folder = Path(folder)
    meta_file = folder / METAFNAME
    if not meta_file.is_file():
        return f"no {METAFNAME} (the save did not finish)"
    try:
        with open(meta_file, encoding="utf-8") as f:
            meta = yaml.safe_load(f)
    except yaml.YAMLError as err:
        return f"{METAFNAME} does not parse ({err})"
    if not isinstance(meta, dict) or "unixtime" not in meta or "end-of-epoch" not in meta:
        return f"{METAFNAME} is empty or cut short"
    for name in required_names:
        problem = _file_problem(folder / f"{name}{PARAMFILE_EXT}")
        if problem:
            return problem
    return None


def non_finite_tensors(recoverables):
    """Names of the parameters and buffers of the ``nn.Module`` recoverables that hold a NaN or
    an infinity."""
    bad = []
    for name, obj in recoverables.items():
        if isinstance(obj, torch.nn.Module):
            for key, tensor in obj.state_dict().items():
                if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                    bad.append(f"{name}.{key}")
    return bad


# save_on_main_only=False: every rank runs the saver, which gathers the ranks' states (a
# collective); SpeechBrain's default runs savers on the main process only.
@functools.partial(register_checkpoint_hooks, save_on_main_only=False)
class RandomStates:
    """The process-wide random-number generators as a Checkpointer recoverable: torch's CPU
    generator (and every CUDA device's), numpy's global generator and Python's ``random``.

    Declared in a training YAML under ``checkpointer: recoverables:``. Saved with every
    checkpoint, restored on recovery: a run resumed from an end-of-epoch checkpoint then draws
    exactly what the uninterrupted run drew after that checkpoint was saved. That covers every
    draw of the recipes: dropout, SpeechBrain's augmentation (``Augmenter`` draws with
    ``random``, ``SpeedPerturb`` with torch), the speaker recipe's random crops (torch, in the
    main process or in DataLoader workers, which torch seeds from a base seed drawn from this
    generator each epoch). Generators that are functions of the epoch hold no state of their
    own to save: SpeechBrain's ``ReproducibleRandomSampler`` (seeded ``seed + epoch``) and the
    joint recipe's ``DynamicMixingDataset`` (item ``i`` of epoch ``e`` drawn from ``(seed, e, i)``),
    whose epoch comes from the checkpointed epoch counter.

    Under DDP every rank has its own states: all are gathered and saved by the main process,
    and each rank restores its own. Resuming with another number of processes keeps the
    current states and logs that the run is not an exact continuation.

    Mid-epoch (intra-epoch) checkpoints restore the states as they were at the save, and
    SpeechBrain's ``SaveableDataLoader`` skips the batches already seen, but the resumed
    epoch's DataLoader iterator is created after the restore (drawing its workers' base seed
    once more) and DataLoader workers' own generators are not saved: the order of the data is
    the same, the random draws are not.
    """

    @staticmethod
    def current():
        """This process's generator states."""
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
            "numpy": np.random.get_state(),
            "python": random.getstate(),
        }

    @staticmethod
    def restore(states):
        """Sets this process's generators to ``states`` (from :meth:`current`)."""
        torch.set_rng_state(states["torch"])
        if states["cuda"] and torch.cuda.is_available():
            if len(states["cuda"]) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(states["cuda"])
            else:
                logger.warning(
                    "The checkpoint holds the states of %d CUDA devices, this machine has %d: "
                    "CUDA generators not restored (the run is not an exact continuation).",
                    len(states["cuda"]),
                    torch.cuda.device_count(),
                )
        np.random.set_state(states["numpy"])
        random.setstate(states["python"])

    @mark_as_saver
    def _save(self, path):
        states = gather_objects(self.current())  # every rank takes part; the main one writes
        if if_main_process():
            torch.save({"ranks": states}, path)

    @mark_as_loader
    def _recover(self, path, end_of_epoch):
        del end_of_epoch  # the same either way (see the class docstring for mid-epoch)
        ranks = torch.load(path, map_location="cpu", weights_only=False)["ranks"]
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        rank = torch.distributed.get_rank() if distributed else 0
        world = torch.distributed.get_world_size() if distributed else 1
        if len(ranks) != world:
            logger.warning(
                "%s holds the random states of %d processes and this run has %d: the states "
                "are not restored, so the resumed run draws other random numbers than an "
                "uninterrupted one would.",
                path,
                len(ranks),
                world,
            )
            return
        self.restore(ranks[rank])


class AtomicCheckpointer(Checkpointer):
    """SpeechBrain's ``Checkpointer`` (same arguments, same layout) whose checkpoints appear
    only when complete and whose recovery sets incomplete ones aside.

    A :class:`RandomStates` recoverable is optional: a checkpoint written before the random
    states were saved still resumes (with a warning: not an exact continuation)."""

    def add_recoverables(self, recoverables):
        super().add_recoverables(recoverables)
        self._random_states_optional()

    def add_recoverable(self, name, obj, *args, **kwargs):
        super().add_recoverable(name, obj, *args, **kwargs)
        self._random_states_optional()

    def _random_states_optional(self):
        for name, obj in self.recoverables.items():
            if isinstance(obj, RandomStates):
                self.optional_recoverables[name] = True

    def _call_load_hooks(self, checkpoint):
        for name, obj in self.recoverables.items():
            if isinstance(obj, RandomStates) and name not in checkpoint.paramfiles:
                logger.warning(
                    "%s holds no random states (%s%s: saved before they were checkpointed): "
                    "resuming, but not as an exact continuation of the interrupted run.",
                    checkpoint.path,
                    name,
                    PARAMFILE_EXT,
                )
        return super()._call_load_hooks(checkpoint)

    def save_checkpoint(self, meta={}, end_of_epoch=True, name=None, verbosity=20):  # noqa: B006
        bad = non_finite_tensors(self.recoverables)
        if bad:
            raise FloatingPointError(
                f"Refusing to checkpoint non-finite weights ({len(bad)} tensors, e.g. "
                f"{bad[:3]}) in {self.checkpoints_dir}. The last complete checkpoint is kept; "
                "lower the learning rate or check the training data for NaN/Inf samples."
            )
        try:
            checkpoint = super().save_checkpoint(meta, end_of_epoch, name, verbosity)
        finally:
            self._being_written = None
        if checkpoint is not None:  # the main process: publish the folder
            os.replace(checkpoint.path / PENDING_META, checkpoint.path / METAFNAME)
        # Under DDP every rank waits for it: the other ranks return from SpeechBrain's save as
        # soon as the main process has written the last file, and a rank that lists the
        # checkpoints before the rename misses this one. save_and_keep_only would then prune a
        # different set on each rank, and each deletion is a collective (SpeechBrain's
        # main_process_only broadcasts): the ranks wait on different collectives forever.
        ddp_barrier()
        return checkpoint

    def _save_checkpoint_metafile(self, fpath, meta_to_include={}, end_of_epoch=True):  # noqa: B006
        # Written under a temporary name; save_checkpoint renames it once the files are written.
        self._being_written = Path(fpath).parent  # not "incomplete": in progress, by this process
        return super()._save_checkpoint_metafile(
            Path(fpath).with_name(PENDING_META), meta_to_include, end_of_epoch
        )

    def _required_names(self):
        if self.allow_partial_load:
            return []
        return [n for n in self.recoverables if not self.optional_recoverables.get(n, False)]

    def _list_checkpoint_dirs(self):
        complete = []
        for path in sorted(self.checkpoints_dir.iterdir()):
            if not (path.is_dir() and path.name.startswith(CKPT_PREFIX)):
                continue
            if path == getattr(self, "_being_written", None):
                continue
            reason = incomplete_reason(path, self._required_names())
            if reason is None:
                complete.append(path)
            elif if_main_process():
                aside = path.with_name(SET_ASIDE_PREFIX + path.name)
                os.replace(path, aside)
                logger.warning(
                    "Checkpoint %s is incomplete (%s), probably from a run that was killed while "
                    "saving: set aside as %s; resuming from the last complete checkpoint.",
                    path,
                    reason,
                    aside,
                )
        return complete

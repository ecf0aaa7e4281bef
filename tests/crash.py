"""Runs a recipe script and kills it with SIGKILL at a point the test chooses, never by a timer.

    python tests/crash.py batch:EPOCH:N -- recipes/joint/train.py hparams.yaml --key=value ...
        killed at the start of the N-th training batch of epoch EPOCH (mid-epoch)
    python tests/crash.py saving:NAME:K -- recipes/joint/train.py ...
        killed halfway through writing NAME.ckpt into a CKPT+* folder for the K-th time
        (mid-checkpoint: the file is left cut in half, as a crash during the write leaves it)

The recipe runs unchanged (``runpy``, as ``python script.py``); only the kill point is added, by
wrapping ``speechbrain.Brain.fit_batch`` or ``torch.save`` in this process. SIGKILL cannot be
caught, so the recipe gets no chance to clean up: what is on disk is what a crash leaves.
"""

import io
import os
import runpy
import signal
import sys

import speechbrain as sb
import torch


def die():
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def kill_in_batch(epoch, n):
    fit_batch = sb.Brain.fit_batch
    seen = {}

    def wrapped(self, batch):
        current = self.hparams.epoch_counter.current
        seen[current] = seen.get(current, 0) + 1
        if current == epoch and seen[current] == n:
            die()
        return fit_batch(self, batch)

    sb.Brain.fit_batch = wrapped


def kill_while_saving(name, k):
    save = torch.save
    count = [0]

    def wrapped(obj, f, *args, **kwargs):
        path = os.fspath(f) if isinstance(f, str | os.PathLike) else ""
        in_checkpoint = os.path.basename(os.path.dirname(path)).startswith("CKPT+")
        if in_checkpoint and os.path.basename(path) == f"{name}.ckpt":
            count[0] += 1
            if count[0] == k:
                buffer = io.BytesIO()
                save(obj, buffer, *args, **kwargs)
                data = buffer.getvalue()
                with open(f, "wb") as out:
                    out.write(data[: len(data) // 2])
                die()
        return save(obj, f, *args, **kwargs)

    torch.save = wrapped


if __name__ == "__main__":
    point, sep, script, *args = sys.argv[1:]
    assert sep == "--", __doc__
    kind, what, count = point.split(":")
    if kind == "batch":
        kill_in_batch(int(what), int(count))
    elif kind == "saving":
        kill_while_saving(what, int(count))
    else:
        raise SystemExit(f"unknown kill point {point}\n{__doc__}")
    sys.argv = [script, *args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")

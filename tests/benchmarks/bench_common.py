"""What every benchmark script records with its numbers, and how it writes them."""

import ctypes
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
GIB = 2**30


def load_script(relative_path, name):
    """A recipe script as a module (its Brain and helpers), without running its main."""
    spec = importlib.util.spec_from_file_location(name, REPO / relative_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_timed(cmd):
    """Runs ``python cmd`` in the repository (raising with its stderr if it fails); returns
    ``(wall, cpu)`` seconds (cpu: user + sys of the child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    proc = subprocess.run(
        [sys.executable, *map(str, cmd)], cwd=REPO, capture_output=True, text=True, check=False
    )
    wall = time.time() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return round(wall, 1), round(cpu, 1)


def machine_info():
    """The machine and software the numbers were measured on (load average: now)."""
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "processor": model or platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "numpy": np.__version__,
    }


def write_result(out, result, machine=None):
    """Adds the machine (``machine_info()`` unless given) and writes the JSON to ``out`` and
    stdout."""
    result = {**result, "machine": machine or machine_info()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2) + "\n"
    out.write_text(text)
    sys.stdout.write(text)
    return result


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


_LIBC = ctypes.CDLL("libc.so.6")
_LIBC.mallinfo2.restype = _Mallinfo2


def heap_bytes():
    """Bytes glibc has handed out and not taken back: in-use arena chunks + mmapped blocks."""
    info = _LIBC.mallinfo2()
    return info.uordblks + info.hblkhd


class HeapPeak:
    """Samples :func:`heap_bytes` every millisecond in a thread (torch releases the GIL in its
    kernels) and keeps the maximum."""

    def __enter__(self):
        self.peak = heap_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, heap_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, heap_bytes())


def emit_record(record):
    """A case process's result, on stdout for :func:`run_case`."""
    print("RECORD " + json.dumps(record), flush=True)


def run_case(script, *options, env=None):
    """Runs ``python script --child *options`` in a fresh process (its peak RSS its own; ``env``:
    variables added to its environment) and returns the record it emitted; raises with its
    stderr if it fails."""
    cmd = [sys.executable, str(script), "--child", *map(str, options)]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, check=False, env={**os.environ, **(env or {})}
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    line = [x for x in proc.stdout.splitlines() if x.startswith("RECORD ")][-1]
    record = json.loads(line[len("RECORD ") :])
    print(record, flush=True)
    return record


def checkpointing_ratios(records, case_keys, label):
    """``{label(case): {quantity: checkpointed / plain}}`` for each checkpointed record and the
    plain record of the same ``case_keys`` values (wall and CPU time per step, heap, RSS)."""
    ratios = {}
    for r in records:
        if not r["activation_checkpointing"]:
            continue
        base = next(
            (
                b
                for b in records
                if not b["activation_checkpointing"] and all(b[k] == r[k] for k in case_keys)
            ),
            None,
        )
        if base is None:  # the plain case was not run
            continue
        ratios[label(r)] = {
            key: round(r[key] / base[key], 3)
            for key in ("seconds_per_step", "cpu_seconds_per_step", "peak_heap_gib", "peak_rss_gib")
        }
    return ratios


def measure_steps(step, steps, modules):
    """Times ``steps`` calls of ``step()`` after one warm-up call (optimizer state allocated),
    sampling the live heap throughout; returns the record fields every step benchmark shares.
    ``cpu_seconds_per_step`` is the process's CPU time (all its threads, the heap sampler's
    millisecond wake-ups included): with one torch thread it is the step's cost whatever else
    the machine runs, where wall time on a shared machine is not."""
    model = heap_bytes()
    step()
    times, cpu_times = [], []
    with HeapPeak() as peak:
        for _ in range(steps):
            start, cpu_start = time.perf_counter(), time.process_time()
            step()
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    return {
        "steps": steps,
        "torch_threads": torch.get_num_threads(),
        "seconds_per_step": round(float(np.median(times)), 2),
        "step_times": [round(t, 2) for t in times],
        "cpu_seconds_per_step": round(float(np.median(cpu_times)), 2),
        "model_gib": round(model / GIB, 3),
        "peak_heap_gib": round(peak.peak / GIB, 3),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "parameters": sum(p.numel() for p in modules.parameters()),
        "trainable_parameters": sum(p.numel() for p in modules.parameters() if p.requires_grad),
    }

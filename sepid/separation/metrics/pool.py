"""Rows for many items in a process pool (:func:`evaluate_many`), each worker with single-threaded
BLAS through ``threadpoolctl`` (:func:`blas_threads_limited`): several processes with
multi-threaded BLAS oversubscribe the cores and make BSS-eval's solves many times slower."""

import contextlib
import os
from concurrent.futures import ProcessPoolExecutor

from threadpoolctl import threadpool_limits

from sepid.separation.metrics.rows import evaluate_separation

__all__ = ["blas_threads_limited", "evaluate_many"]


def blas_threads_limited(n_threads):
    """Context manager limiting the BLAS thread pools of this process, restored on exit.

    Several processes with multi-threaded BLAS oversubscribe the cores, and OpenBLAS's spinning
    threads can then make the linear solves of BSS-eval many times slower; each worker of a
    process pool should run single-threaded BLAS. This is
    ``threadpoolctl.threadpool_limits(limits=n_threads, user_api="blas")``: every BLAS library
    loaded in the process (numpy's and scipy's OpenBLAS, MKL, ...) is limited.

    Parameters
    ----------
    n_threads : int
        Number of BLAS threads inside the block.
    """
    return threadpool_limits(limits=n_threads, user_api="blas")


def _init_worker(blas_threads):
    """Process-pool initializer: ``blas_threads`` BLAS threads for the worker's whole life."""
    if blas_threads is not None:
        threadpool_limits(limits=blas_threads, user_api="blas")


_BLAS_ENV_KEYS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@contextlib.contextmanager
def _metric_pool(n_workers, blas_threads=1, mp_context="fork"):
    """A ``ProcessPoolExecutor`` whose workers run with ``blas_threads`` BLAS threads.

    The limit is set by the pool initializer (:func:`_init_worker`); with a start method other
    than ``"fork"`` it is also exported through the BLAS environment variables while the workers
    start (so the libraries never create more threads), restored on exit.
    """
    import multiprocessing

    saved = {k: os.environ.get(k) for k in _BLAS_ENV_KEYS}
    if blas_threads is not None and mp_context != "fork":
        os.environ.update({k: str(blas_threads) for k in _BLAS_ENV_KEYS})
    try:
        with ProcessPoolExecutor(
            max_workers=n_workers,
            mp_context=multiprocessing.get_context(mp_context),
            initializer=_init_worker,
            initargs=(blas_threads,),
        ) as pool:
            yield pool
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _evaluate_item(args):
    item, kwargs = args
    if isinstance(item, dict):
        est, ref, mix = item["estimates"], item["references"], item["mixture"]
    else:
        est, ref, mix = item
    return evaluate_separation(est, ref, mix, **kwargs)


def evaluate_many(
    items,
    sample_rate,
    n_jobs=2,
    metrics=("si_sdr", "sdr", "pesq", "stoi"),
    backend="fast",
    eps=1e-8,
    blas_threads=1,
    mp_context="fork",
    chunksize=1,
):
    """:func:`evaluate_separation` over many items, in a pool of ``n_jobs`` processes.

    Parameters
    ----------
    items : iterable
        Each item is ``(estimates, references, mixture)`` or a dict with those keys.
    sample_rate : int
    n_jobs : int or None
        Number of worker processes (``None``: ``os.cpu_count()``); ``1`` runs in this process.
    metrics, backend, eps
        See :func:`evaluate_separation`.
    blas_threads : int or None
        BLAS threads per worker (default 1, so that ``n_jobs`` workers do not oversubscribe the
        cores); ``None`` leaves the BLAS configuration alone.
    mp_context : str
        ``multiprocessing`` start method. ``"fork"`` (default, POSIX only) starts workers
        instantly; use ``"spawn"`` if the calling process runs threads that are not fork-safe
        (e.g. an active CUDA context); the BLAS limit is then also exported through the
        ``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` environment
        variables while the workers start.
    chunksize : int
        Items sent to a worker at a time.

    Returns
    -------
    list of dict
        One row per item, in input order.
    """
    kwargs = {"sample_rate": sample_rate, "metrics": tuple(metrics), "backend": backend, "eps": eps}
    if n_jobs is None:
        n_jobs = os.cpu_count() or 1
    if n_jobs < 1:
        raise ValueError(f"n_jobs must be >= 1, got {n_jobs}")
    jobs = [(item, kwargs) for item in items]
    if n_jobs == 1 or len(jobs) <= 1:
        return [_evaluate_item(job) for job in jobs]

    with _metric_pool(min(n_jobs, len(jobs)), blas_threads, mp_context) as pool:
        return list(pool.map(_evaluate_item, jobs, chunksize=chunksize))

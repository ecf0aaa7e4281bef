"""The assignment of estimates to references that maximises a mean score: the permutation of
permutation-invariant SI-SDR (score = SI-SDR) and of BSS-eval (score = SIR)."""

import itertools

import numpy as np

__all__ = ["best_permutation"]

#: Largest number of sources for which permutations are enumerated exhaustively.
MAX_EXHAUSTIVE_SOURCES = 8


def best_permutation(score):
    """Permutation maximising the mean of ``score[i, perm[i]]`` (first one on ties).

    ``score`` is ``[n_ref, n_est]``; ``perm[i]`` is the estimate assigned to reference ``i``.
    Permutations are enumerated in ``itertools`` order (as ``mir_eval`` does) for up to
    :data:`MAX_EXHAUSTIVE_SOURCES` sources, otherwise the Hungarian algorithm gives the same
    optimum.
    """
    n = score.shape[0]
    if n > MAX_EXHAUSTIVE_SOURCES:
        from scipy.optimize import linear_sum_assignment

        _, cols = linear_sum_assignment(score, maximize=True)
        return np.asarray(cols, dtype=np.int64)
    rows = np.arange(n)
    best, best_value = None, -np.inf
    for perm in itertools.permutations(range(n)):
        value = score[rows, perm].mean()
        if best is None or value > best_value:
            best, best_value = perm, value
    return np.asarray(best, dtype=np.int64)

"""Permutation-invariant speech-separation metrics, computed as the literature defines them.

Inputs are float arrays at one sample rate (named by the caller): ``estimates [n_src, T]``,
``references [n_src, T]`` and ``mixture [T]``. Everything is computed in float64. A permutation
``perm`` always has the meaning of ``mir_eval``'s: ``perm[i]`` is the index of the *estimate*
assigned to *reference* ``i``, so ``estimates[perm[i]]`` is scored against ``references[i]``.
A metric that is undefined for an item (silent reference, PESQ finding no utterance, ...) raises
:class:`~sepid.separation.metrics.inputs.UndefinedMetricError` in the single-metric functions
and is recorded as ``None`` by :func:`~sepid.separation.metrics.rows.evaluate_separation`; it is
never replaced by zero or NaN.

One module per concern (import from the module that holds the name; this file holds none):

* ``inputs``: what every metric accepts and refuses (float64 conversion, shape checks,
  ``UndefinedMetricError``).
* ``permutation``: the best assignment of estimates to references (``best_permutation``).
* ``sisdr``: SI-SDR (Le Roux, Wisdom, Erdogan, Hershey, "SDR - half-baked or well done?",
  ICASSP 2019), permutation-invariant SI-SDR and SI-SDRi (``si_sdr``, ``pit_si_sdr``,
  ``si_sdr_improvement``).
* ``bss``: BSS-eval v3 SDR / SIR / SAR (Vincent, Gribonval, Fevotte, IEEE TASLP 2006) and SDRi,
  with the ``"fast"`` (``fast_bss_eval``) and ``"mir_eval"`` backends (``bss_eval``,
  ``sdr_improvement``).
* ``perceptual``: PESQ (ITU-T P.862 / P.862.2) and STOI / ESTOI (``pesq_score``,
  ``stoi_score``).
* ``rows``: every requested metric for one item as one row of a results table, and summaries
  over rows (``evaluate_separation``, ``summarize``).
* ``pool``: rows for many items in a process pool whose workers run single-threaded BLAS
  (``evaluate_many``, ``blas_threads_limited``).
"""

"""Two-speaker mixtures: speaker splits, pairing, levels, clip-free scaling and writing, shared by
:func:`sepid.data.mixture_corpus.make_mixtures` (a fixed mixture corpus on disk,
``data_prep/make_mixtures.py``) and :class:`DynamicMixingDataset` (new mixtures drawn on the fly
every epoch, for training the joint recipe); :func:`written_mixture_dataset` is the joint recipe's
other training set, a written mixture corpus.

Both go through the same functions: :func:`split_speaker_pools` (which speakers and utterances
each split draws from), :func:`draw_pair` (two utterances of two different speakers), and
:class:`MixingOptions` (how they are mixed: :func:`draw_levels` for the source levels,
:func:`mix_sources` for the mixing itself).

Speaker splits (:func:`split_speaker_pools`)
--------------------------------------------
``split_speakers`` maps ``train``, ``valid`` and ``test`` to:

- an int ``N``: the next ``N`` speakers of the manifest in sorted (string) order, taken in the
  order train, valid, test from the speakers not named by an explicit list. The default
  ``{"train": 50, "valid": 0, "test": 50}`` on VoxCeleb2's first 100 speakers reproduces the
  reference system: speakers 1-50 for training mixtures, 51-100 for test mixtures;
- a list of speaker IDs, a comma-separated string or a speaker list file (one ID per line), as
  ``--speakers`` of the prep scripts (:func:`sepid.data.speakers.select_speakers`).

Speaker sets are disjoint across splits (overlapping lists are an error), with one exception:
``valid`` given ``0`` (or ``None`` / an empty list) draws its mixtures from the **train speakers**
but on held-out **utterances**: for each train speaker with at least two usable utterances, its
sorted utterance IDs are shuffled with ``random.Random(f"mixtures-valid:{spk}")`` and the first
``max(1, round(valid_utt_fraction * n))`` (at most ``n - 1``) are held out for valid; train
mixtures never use them. The hold-out does not depend on ``seed``, so a dynamic-mixing training
set (:meth:`DynamicMixingDataset.for_split`) excludes exactly the utterances of ``valid.csv``.
``valid_utt_fraction=0`` holds nothing out (and valid mixtures then cannot be drawn).

Speaker classes: ``s1_class`` / ``s2_class`` are the index of the speaker in the sorted list of
**all** speakers of that split (the list in ``speakers.json``, speakers without a usable
utterance included), so they are in ``[0, n_speakers_of_split)``; valid mixtures drawn from the
train speakers use the train indices. Recipes may re-map them through a label encoder.

Utterances shorter than ``min_duration`` seconds (manifest ``duration`` column) are never used;
their number is logged. A split needs two speakers with usable utterances to draw mixtures.

Levels and mixing (:func:`draw_levels`, :func:`mix_sources`)
------------------------------------------------------------
- ``loudness="none"`` (default): both sources are normalised to the same RMS level,
  :data:`REF_LEVEL_DB` dBFS (RMS over the samples kept, before any zero padding), then ``s2`` is
  scaled by ``10 ** (gain_db / 20)``, ``gain_db`` drawn uniformly in ``gain_db_range`` (default
  ``(0, 0)``: equal levels). ``gain_db`` is thus the level of s2 relative to s1.
- ``loudness="librimix"``: an approximation of LibriMix's loudness targets without pyloudnorm:
  each source gets a level drawn uniformly in ``[-33, -25]`` dBFS **RMS** (LibriMix draws LUFS;
  RMS ignores the K-weighting and gating of LUFS). ``gain_db`` is then the drawn level of s2
  minus that of s1, and ``gain_db_range`` must stay ``(0, 0)``.

Drawn levels and gains are rounded to :data:`DB_DECIMALS` decimals before use, so the
``gain_db`` written in a CSV is exactly the one applied.

``length_mode="min"`` keeps the first ``min(len(s1), len(s2))`` samples of both (as the reference
system and LibriMix "min"); ``"max"`` zero-pads the shorter at its end.

No clipping: if ``max(|mix|, |s1|, |s2|)`` exceeds :data:`MAX_PEAK`, the three signals are scaled
by the same factor. ``mix`` is computed as ``s1 + s2`` in float32 after that scaling, so
``mix == s1 + s2`` holds exactly for the returned tensors and for the files written by
:func:`write_float_wav` (32-bit float WAV, no quantisation).

A source with (numerically) zero RMS cannot be set to a level: :func:`mix_sources` raises
:class:`SilentSourceError` and both users draw again (a bounded number of times).
"""

import functools
import logging
import math
import random
import struct
from dataclasses import dataclass, field

import numpy as np
import speechbrain as sb
import torch
from speechbrain.dataio.batch import PaddedBatch

from sepid.data.audio import audio_info, read_audio
from sepid.data.dataio import load_manifest
from sepid.data.manifest import read_csv, resolve_path, write_atomic
from sepid.data.schema import EVAL_MIXTURE_COLUMNS, UTTERANCE_COLUMNS
from sepid.data.speakers import select_speakers

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
DEFAULT_SPLIT_SPEAKERS = {"train": 50, "valid": 0, "test": 50}
DEFAULT_N_MIX = {"train": 1000, "valid": 100, "test": 200}
LENGTH_MODES = ("min", "max")
LOUDNESS_MODES = ("none", "librimix")

REF_LEVEL_DB = -25.0
LIBRIMIX_LEVEL_RANGE_DB = (-33.0, -25.0)
MAX_PEAK = 0.99
SILENCE_RMS = 1e-6
DB_DECIMALS = 4
MAX_ATTEMPTS = 100
REPAIR_BUDGET = 2_000_000  # planned pairs examined by one DistinctPairDrawer repair at most


class SilentSourceError(ValueError):
    """A source whose RMS is (numerically) zero: it cannot be set to a level."""


# --------------------------------------------------------------------------- option checks


def check_mixing_options(length_mode="min", gain_db_range=(0.0, 0.0), loudness="none"):
    """Validates the mixing options shared by both users; returns ``gain_db_range`` as a tuple
    of two floats."""
    if length_mode not in LENGTH_MODES:
        raise ValueError(f"length_mode={length_mode!r}: use one of {LENGTH_MODES}.")
    if loudness not in LOUDNESS_MODES:
        raise ValueError(f"loudness={loudness!r}: use one of {LOUDNESS_MODES}.")
    try:
        low, high = (float(g) for g in gain_db_range)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"gain_db_range={gain_db_range!r}: give two numbers (low, high) in dB."
        ) from err
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ValueError(f"gain_db_range={gain_db_range!r}: need finite low <= high (dB).")
    if loudness == "librimix" and (low, high) != (0.0, 0.0):
        raise ValueError(
            f"gain_db_range={gain_db_range!r} with loudness='librimix': the relative level "
            "comes from the two drawn source levels there; leave gain_db_range at (0, 0)."
        )
    return low, high


@dataclass(frozen=True)
class MixingOptions:
    """How two drawn utterances become a mixture, the same for a written corpus
    (:func:`sepid.data.mixture_corpus.make_mixtures`) and dynamic mixing
    (:class:`DynamicMixingDataset`); checked when made (see the module docstring).

    Attributes
    ----------
    length_mode : str
        ``"min"`` (both cut to the shorter source) or ``"max"`` (the shorter zero-padded).
    gain_db_range : tuple of float
        Range of the uniform draw of s2's level relative to s1 (dB).
    loudness : str
        ``"none"`` (equal RMS, then ``gain_db``) or ``"librimix"`` (RMS levels in [-33, -25]).
    min_duration : float
        Shortest usable utterance (seconds; and, for a written corpus, shortest mixture).
    seed : int
        Base seed of the draws.
    """

    length_mode: str = "min"
    gain_db_range: tuple = (0.0, 0.0)
    loudness: str = "none"
    min_duration: float = 1.0
    seed: int = 1234

    def __post_init__(self):
        gains = check_mixing_options(self.length_mode, self.gain_db_range, self.loudness)
        object.__setattr__(self, "gain_db_range", gains)
        if self.min_duration < 0:
            raise ValueError(f"min_duration={self.min_duration} must be >= 0.")

    def draw_levels(self, rng):
        """``(level_db, gain_db)`` of one mixture, see :func:`draw_levels`."""
        return draw_levels(rng, self.gain_db_range, self.loudness)

    def mix(self, s1, s2, level_db, gain_db):
        """``(mix, s1, s2)``, see :func:`mix_sources`."""
        return mix_sources(s1, s2, gain_db, self.length_mode, level_db)


# --------------------------------------------------------------------------- speakers and pools


@dataclass(frozen=True)
class Source:
    """One utterance of the speaker manifest: ID, resolved path, speaker, duration (s), and the
    part of the file it stands for (``start``, ``stop`` in seconds; ``stop`` None: to the end).
    The speaker data prep's ``train.csv`` / ``valid.csv`` have ``start, stop`` columns: a
    training row stops where its held-out validation segment starts."""

    id: str
    path: str
    spk: str
    duration: float
    start: float = 0.0
    stop: float | None = None


@dataclass
class SpeakerPool:
    """What one split draws from.

    Attributes
    ----------
    speakers : list of str
        Sorted speakers of the split; a speaker's class is its index here.
    utts : dict
        Speaker -> sorted list of usable :class:`Source` (speakers without any are absent).
    """

    speakers: list
    utts: dict = field(default_factory=dict)

    @functools.cached_property
    def drawable(self):
        """Sorted speakers with at least one usable utterance."""
        return [s for s in self.speakers if self.utts.get(s)]

    @functools.cached_property
    def _classes(self):
        return {spk: i for i, spk in enumerate(self.speakers)}

    def class_of(self, spk):
        """Index of ``spk`` in :attr:`speakers`."""
        return self._classes[spk]

    def check(self, split, source):
        """Raises a clear error when fewer than two speakers can be drawn."""
        drawable = self.drawable
        if len(drawable) < 2:
            raise ValueError(
                f"Split {split!r} of {source} has {len(drawable)} speaker(s) with usable "
                f"utterances ({drawable}; {len(self.speakers)} selected); a mixture needs two "
                "different speakers. Give this split more speakers (split_speakers / "
                f"--{split}_speakers), lower min_duration, or ask for no {split} mixtures."
            )


def load_sources(manifest, data_folder, min_duration=1.0):
    """Reads a speaker manifest (``ID, duration, wav, spk_id``).

    Returns
    -------
    speakers : list of str
        Sorted speakers of the manifest (all of them, short utterances or not).
    sources : dict
        Speaker -> list of :class:`Source` at least ``min_duration`` long, sorted by ID.
    """
    rows = read_csv(manifest, UTTERANCE_COLUMNS)
    if not rows:
        raise ValueError(f"Manifest {manifest} has no rows. Rerun the data prep that writes it.")
    speakers = sorted({row["spk_id"] for row in rows})
    sources, short = {}, 0
    for row in sorted(rows, key=lambda r: r["ID"]):
        try:
            duration = float(row["duration"])
        except ValueError as err:
            raise ValueError(
                f"Manifest {manifest}: row {row['ID']!r} has a non-numeric duration "
                f"{row['duration']!r}. Regenerate it with the data prep script."
            ) from err
        if duration < min_duration:
            short += 1
            continue
        path = resolve_path(row["wav"], data_folder)
        start, stop = _segment(row, manifest)
        sources.setdefault(row["spk_id"], []).append(
            Source(row["ID"], path, row["spk_id"], duration, start, stop)
        )
    if short:
        logger.info(
            "Skipped %d utterance(s) of %s shorter than min_duration=%s s",
            short,
            manifest,
            min_duration,
        )
    return speakers, sources


def _segment(row, manifest):
    """``(start, stop)`` seconds of a manifest row: its ``start`` / ``stop`` columns when it
    has them (segment manifests), else the whole file ``(0.0, None)``."""
    try:
        start = float(row.get("start") or 0.0)
        stop = float(row["stop"]) if row.get("stop") not in (None, "") else None
    except ValueError as err:
        raise ValueError(
            f"Manifest {manifest}: row {row['ID']!r} has a non-numeric start/stop "
            f"({row.get('start')!r}, {row.get('stop')!r}). Regenerate it with the data prep."
        ) from err
    return start, stop


def _is_none_spec(spec):
    return (
        spec is None
        or (isinstance(spec, int) and not isinstance(spec, bool) and spec == 0)
        or (isinstance(spec, list | tuple) and len(spec) == 0)
    )


def select_split_speakers(available, split_speakers=None, source="the manifest"):
    """Speakers of each split (see the module docstring).

    Arguments
    ---------
    available : list of str
        Speakers of the manifest.
    split_speakers : dict, optional
        ``train`` / ``valid`` / ``test`` -> int, list, comma string or file; missing keys take
        :data:`DEFAULT_SPLIT_SPEAKERS`.
    source : str
        Named in error messages.

    Returns
    -------
    speakers : dict
        Split -> sorted list of speaker IDs (valid from train: the train list).
    valid_from_train : bool
        Whether valid mixtures come from held-out utterances of the train speakers.
    """
    spec = dict(DEFAULT_SPLIT_SPEAKERS)
    spec.update(split_speakers or {})
    unknown = sorted(set(spec) - set(SPLITS))
    if unknown:
        raise ValueError(f"split_speakers has unknown split(s) {unknown}; use {list(SPLITS)}.")
    available = sorted(set(available))
    chosen = {}
    for split in SPLITS:
        value = spec[split]
        if _is_none_spec(value):
            chosen[split] = []
        elif isinstance(value, bool) or (isinstance(value, int) and value < 0):
            raise ValueError(f"split_speakers[{split!r}]={value!r}: give a count >= 0 or IDs.")
        elif not isinstance(value, int):
            chosen[split] = select_speakers(available, value, source)
    explicit = [s for split in SPLITS if split in chosen for s in chosen[split]]
    free = [s for s in available if s not in set(explicit)]
    counts = {split: spec[split] for split in SPLITS if split not in chosen}
    if sum(counts.values()) > len(free):
        raise ValueError(
            f"split_speakers asks for {' + '.join(f'{n} {k}' for k, n in counts.items())} "
            f"speakers (first in sorted order), but {source} has only {len(free)} "
            f"{'unassigned ' if explicit else ''}speaker(s) ({len(available)} in all). "
            "Give smaller counts (--train_speakers / --valid_speakers / --test_speakers)."
        )
    start = 0
    for split in SPLITS:
        if split in counts:
            chosen[split] = free[start : start + counts[split]]
            start += counts[split]
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1 :]:
            common = sorted(set(chosen[a]) & set(chosen[b]))
            if common:
                raise ValueError(
                    f"Speakers {common[:10]} are in both the {a} and the {b} split of {source}: "
                    "mixture splits must have disjoint speakers."
                )
    valid_from_train = not chosen["valid"]
    if valid_from_train:
        chosen["valid"] = list(chosen["train"])
    return {split: sorted(chosen[split]) for split in SPLITS}, valid_from_train


def held_out_valid_utterances(sources, speakers, valid_utt_fraction=0.1):
    """IDs of the train speakers' utterances held out for valid mixtures (module docstring)."""
    if not 0 <= valid_utt_fraction < 1:
        raise ValueError(f"valid_utt_fraction={valid_utt_fraction} must be in [0, 1).")
    held = set()
    if valid_utt_fraction == 0:
        return held
    for spk in speakers:
        ids = sorted(s.id for s in sources.get(spk, []))
        if len(ids) < 2:
            continue
        random.Random(f"mixtures-valid:{spk}").shuffle(ids)
        n = min(len(ids) - 1, max(1, int(math.floor(valid_utt_fraction * len(ids) + 0.5))))
        held.update(ids[:n])
    return held


def split_speaker_pools(
    manifest,
    data_folder,
    split_speakers=None,
    min_duration=1.0,
    valid_utt_fraction=0.1,
):
    """The :class:`SpeakerPool` of each split, shared by make_mixtures and dynamic mixing.

    Returns
    -------
    pools : dict
        ``train`` / ``valid`` / ``test`` -> :class:`SpeakerPool`.
    valid_from_train : bool
        See :func:`select_split_speakers`.
    """
    available, sources = load_sources(manifest, data_folder, min_duration)
    speakers, valid_from_train = select_split_speakers(
        available, split_speakers, f"manifest {manifest}"
    )
    held = (
        held_out_valid_utterances(sources, speakers["train"], valid_utt_fraction)
        if valid_from_train
        else set()
    )
    pools = {}
    for split in SPLITS:
        if valid_from_train and split in ("train", "valid"):
            keep = (lambda u: u.id not in held) if split == "train" else (lambda u: u.id in held)
        else:
            keep = None
        pools[split] = make_pool(sources, speakers[split], keep)
    if valid_from_train:
        logger.info(
            "Valid mixtures use %d held-out utterance(s) of the %d train speakers "
            "(valid_utt_fraction=%s)",
            len(held),
            len(speakers["train"]),
            valid_utt_fraction,
        )
    return pools, valid_from_train


def make_pool(sources, speakers, keep=None):
    """A :class:`SpeakerPool` of ``speakers`` from ``load_sources``'s dict, keeping the
    utterances for which ``keep(source)`` is true (all when ``keep`` is None)."""
    speakers = sorted(set(speakers))
    utts = {}
    for spk in speakers:
        kept = [u for u in sources.get(spk, []) if keep is None or keep(u)]
        if kept:
            utts[spk] = kept
    missing = [s for s in speakers if s not in utts]
    if missing:
        logger.warning(
            "%d speaker(s) have no usable utterance and cannot be drawn: %s",
            len(missing),
            missing[:10],
        )
    return SpeakerPool(speakers, utts)


# --------------------------------------------------------------------------- drawing


def draw_pair(rng, pool):
    """Two utterances of two different speakers: both speakers uniformly among the drawable
    speakers of ``pool`` (without replacement), then one utterance of each uniformly.

    Returns
    -------
    tuple of Source
        ``(s1, s2)``.
    """
    drawable = pool.drawable
    a, b = rng.choice(len(drawable), size=2, replace=False)
    utts1, utts2 = pool.utts[drawable[a]], pool.utts[drawable[b]]
    return utts1[int(rng.integers(len(utts1)))], utts2[int(rng.integers(len(utts2)))]


def max_distinct_pairs(pool):
    """How many distinct unordered pairs of utterances of two different speakers ``pool`` holds:
    ``(U**2 - sum_s u_s**2) / 2`` for ``U`` usable utterances, ``u_s`` of speaker ``s``."""
    sizes = [len(pool.utts[spk]) for spk in pool.drawable]
    total = sum(sizes)
    return (total * total - sum(n * n for n in sizes)) // 2


class DistinctPairDrawer:
    """Plans the pairs of a written split: never the same unordered pair of utterances twice
    (``(a, b)`` and ``(b, a)`` included) and each utterance in at most ``reuse_cap =
    ceil(2 n / U)`` pairs (``n`` mixtures, ``U`` usable utterances of the split).

    The plan is made when the drawer is: each new pair takes an utterance under the cap and a
    partner among the utterances of the other speakers that are under the cap and were never
    paired with it, each uniformly among the least used utterances of the speakers with the most
    quota left (:meth:`_pick`, so that no speaker is left over with only itself to pair); which
    one is ``s1`` is drawn with equal odds. When no such pair is left before ``n``, one planned
    pair ``(x, y)`` (not yet written) is swapped for two new ones ``(a, x)``, ``(c, y)`` with
    ``a``, ``c`` utterances under the cap (:meth:`_repair`): one pair more, every use still under
    the cap. Only when no swap exists either (a speaker holding a large share of the
    utterances can make the cap unreachable) is it an error.

    A planned pair that cannot be mixed (:meth:`replace`: a silent source, a mixture too short)
    is never planned again and gives its utterances' quota back; a new pair takes its place.

    Arguments
    ---------
    rng : numpy.random.Generator
        The split's generator.
    pool : SpeakerPool
        What the split draws from.
    n : int
        Mixtures wanted.
    where : str
        Named in errors (e.g. ``"split 'test' of manifest x.csv"``).
    allow_fewer : bool
        When ``n`` exceeds :func:`max_distinct_pairs`: plan that many with a warning instead of
        raising a ``ValueError`` that names the maximum.
    """

    def __init__(self, rng, pool, n, where="the split", allow_fewer=False):
        self.rng = rng
        self.where = where
        self.sources = [u for spk in pool.drawable for u in pool.utts[spk]]
        self.spk = np.array([i for i, spk in enumerate(pool.drawable) for _ in pool.utts[spk]])
        self.n_spk = len(pool.drawable)
        self.maximum = max_distinct_pairs(pool)
        if n > self.maximum:
            message = (
                f"{where}: {n} mixtures asked for, but its {len(self.sources)} usable "
                f"utterances of {len(pool.drawable)} speakers make at most {self.maximum} "
                "distinct pairs (no pair of utterances may be mixed twice)."
            )
            if not allow_fewer:
                raise ValueError(
                    f"{message} Ask for at most {self.maximum} (--n_<split>), give the split "
                    "more speakers or utterances, or pass allow_fewer=True (--allow_fewer) to "
                    f"make {self.maximum} with a warning."
                )
            logger.warning("%s Making %d (allow_fewer=True).", message, self.maximum)
            n = self.maximum
        self.n = int(n)
        self.reuse_cap = -(-2 * self.n // len(self.sources)) if self.n else 0
        self.uses = np.zeros(len(self.sources), dtype=np.int64)
        self.partners = [set() for _ in self.sources]  # planned or banned
        self.pairs = []  # planned (s1, s2) utterance indices
        self.fixed = 0  # pairs[:fixed] are written: never swapped
        # at most cap pairs per utterance, and those of a speaker's utterances need partners
        # among the others: a speaker with more than half the utterances bounds the count
        sizes = np.bincount(self.spk, minlength=self.n_spk)
        bound = int(np.minimum(sizes, len(self.sources) - sizes).sum()) * self.reuse_cap // 2
        if self.n > bound:
            self._unbalanced(f"for {self.n} mixtures (at most {bound} fit under that cap)")
        while len(self.pairs) < self.n:
            self._add(len(self.pairs))

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        """Pair ``i`` as ``(s1, s2)`` :class:`Source`; pairs before it are then written."""
        self.fixed = max(self.fixed, i)
        a, b = self.pairs[i]
        return self.sources[a], self.sources[b]

    def _link(self, a, b, at):
        self.partners[a].add(b)
        self.partners[b].add(a)
        self.uses[a] += 1
        self.uses[b] += 1
        pair = (a, b) if self.rng.random() < 0.5 else (b, a)
        self.pairs.insert(at, pair)

    def _pick(self, candidates):
        """One of ``candidates`` (utterance indices), uniformly among the least used utterances
        of the speakers with the most quota left (``sum(cap - uses)`` over their utterances)."""
        left = np.bincount(self.spk, weights=self.reuse_cap - self.uses, minlength=self.n_spk)
        key = left[self.spk[candidates]] * (self.reuse_cap + 1) - self.uses[candidates]
        best = candidates[key == key.max()]
        return int(best[int(self.rng.integers(best.size))])

    def _free_partners(self, a):
        ok = (self.spk != self.spk[a]) & (self.uses < self.reuse_cap)
        if self.partners[a]:
            ok[list(self.partners[a])] = False
        return np.flatnonzero(ok)

    def _can_pair(self, a, x):
        return a != x and self.spk[a] != self.spk[x] and x not in self.partners[a]

    def _add(self, at):
        """Plans one more pair at position ``at``."""
        open_ = np.flatnonzero(self.uses < self.reuse_cap)
        while open_.size:
            a = self._pick(open_)
            free = self._free_partners(a)
            if free.size:
                self._link(a, self._pick(free), at)
                return
            open_ = open_[open_ != a]
        self._repair(at)

    def _repair(self, at):
        """Swaps an unwritten planned pair ``(x, y)`` for ``(a, x)`` and ``(c, y)``, ``a`` and
        ``c`` under the cap (the same utterance when it has two uses left)."""
        open_ = np.flatnonzero(self.uses < self.reuse_cap).tolist()
        ends = [
            (a, c)
            for i, a in enumerate(open_)
            for c in open_[i:]
            if a != c or self.uses[a] + 2 <= self.reuse_cap
        ]
        order = self.rng.permutation(np.arange(self.fixed, len(self.pairs))).tolist()
        budget = REPAIR_BUDGET
        for a, c in ends:
            budget -= len(order)
            if budget < 0:
                break
            for k in order:
                p, q = self.pairs[k]
                for x, y in ((p, q), (q, p)):
                    if self._can_pair(a, x) and self._can_pair(c, y) and (a, x) != (y, c):
                        del self.pairs[k]
                        self.uses[x] -= 1
                        self.uses[y] -= 1
                        self.partners[x].discard(y)
                        self.partners[y].discard(x)
                        self._link(a, x, k)
                        self._link(c, y, at)
                        return
        self._unbalanced(f"after {len(self.pairs)} mixture(s)")

    def _unbalanced(self, when):
        raise ValueError(
            f"{self.where}: no new pair of utterances is left with each utterance in at most "
            f"{self.reuse_cap} mixtures (ceil(2 x {self.n} / {len(self.sources)} utterances)) "
            f"{when}: one speaker holds too large a share of the utterances to balance their "
            "reuse. Ask for fewer mixtures or give the split speakers with similar numbers of "
            "utterances."
        )

    def replace(self, i):
        """Pair ``i`` could not be mixed: it is dropped (never planned again, its utterances'
        quota back) and a new pair takes its place."""
        self.fixed = i
        a, b = self.pairs.pop(i)
        self.uses[a] -= 1
        self.uses[b] -= 1  # a and b stay in each other's partners: banned
        self._add(i)


def draw_levels(rng, gain_db_range=(0.0, 0.0), loudness="none"):
    """Draws ``(level_db, gain_db)``: the RMS level of s1 (dBFS) and that of s2 relative to s1
    (see the module docstring), rounded to :data:`DB_DECIMALS` decimals."""
    if loudness == "librimix":
        low, high = LIBRIMIX_LEVEL_RANGE_DB
        level1 = round(float(rng.uniform(low, high)), DB_DECIMALS)
        level2 = round(float(rng.uniform(low, high)), DB_DECIMALS)
        return level1, round(level2 - level1, DB_DECIMALS)
    low, high = (float(g) for g in gain_db_range)
    gain = float(rng.uniform(low, high)) if high > low else low
    return REF_LEVEL_DB, round(gain, DB_DECIMALS)


def _set_level(signal, level_db, name):
    rms = float(torch.sqrt(torch.mean(signal**2)))
    if not rms > SILENCE_RMS:
        raise SilentSourceError(f"Source {name} is silent (RMS {rms:.2e}): cannot set its level.")
    return signal * (10.0 ** (level_db / 20.0) / rms)


def mix_sources(s1, s2, gain_db=0.0, length_mode="min", level_db=REF_LEVEL_DB):
    """Mixes two sources at a relative level, without clipping.

    Arguments
    ---------
    s1, s2 : torch.Tensor or array
        Mono signals ``[time]`` at the same sample rate.
    gain_db : float
        Level of s2 relative to s1 (dB).
    length_mode : str
        ``"min"``: both cut to the shorter (first samples kept); ``"max"``: the shorter is
        zero-padded at its end.
    level_db : float
        RMS level of s1 (dBFS) before the anti-clipping scaling.

    Returns
    -------
    tuple of torch.Tensor
        ``(mix, s1, s2)``, float32 ``[time]``, ``mix == s1 + s2`` exactly and every peak at most
        :data:`MAX_PEAK` (up to float32 rounding).

    Raises
    ------
    SilentSourceError
        A source (after the "min" cut) has zero RMS.
    """
    if length_mode not in LENGTH_MODES:
        raise ValueError(f"length_mode={length_mode!r}: use one of {LENGTH_MODES}.")
    s1 = torch.as_tensor(s1).detach().to(torch.float64).reshape(-1)
    s2 = torch.as_tensor(s2).detach().to(torch.float64).reshape(-1)
    if length_mode == "min":
        n = min(s1.shape[0], s2.shape[0])
        s1, s2 = s1[:n], s2[:n]
    s1 = _set_level(s1, level_db, "s1")
    s2 = _set_level(s2, level_db + gain_db, "s2")
    n = max(s1.shape[0], s2.shape[0])
    s1 = torch.nn.functional.pad(s1, (0, n - s1.shape[0]))
    s2 = torch.nn.functional.pad(s2, (0, n - s2.shape[0]))
    peak = max(float(s1.abs().max()), float(s2.abs().max()), float((s1 + s2).abs().max()))
    if peak > MAX_PEAK:
        scale = MAX_PEAK / peak
        s1, s2 = s1 * scale, s2 * scale
    s1, s2 = s1.to(torch.float32), s2.to(torch.float32)
    return s1 + s2, s1, s2


# --------------------------------------------------------------------------- writing


def write_float_wav(path, signal, sample_rate):
    """Writes a mono ``[time]`` signal as a 32-bit float WAV, atomically
    (:func:`sepid.data.manifest.write_atomic`). A fixed header (``fmt``, ``fact``, ``data``), unlike libsndfile's, which adds
    a time-stamped ``PEAK`` chunk: the same signal always gives the same bytes."""
    if isinstance(signal, torch.Tensor):
        signal = signal.detach().cpu().numpy()
    data = np.ascontiguousarray(np.asarray(signal, dtype="<f4").reshape(-1)).tobytes()
    n = len(data) // 4
    sample_rate = int(sample_rate)
    fmt = struct.pack("<HHIIHH", 3, 1, sample_rate, sample_rate * 4, 4, 32)
    header = b"".join(
        [
            b"RIFF",
            struct.pack("<I", 4 + (8 + len(fmt)) + (8 + 4) + (8 + len(data))),
            b"WAVE",
            b"fmt ",
            struct.pack("<I", len(fmt)),
            fmt,
            b"fact",
            struct.pack("<II", 4, n),
            b"data",
            struct.pack("<I", len(data)),
        ]
    )
    write_atomic(path, header + data)


def corpus_sample_rate(pools):
    """Sample rate of the first usable file (sorted by utterance ID) of the pools."""
    first = min((u for pool in pools for us in pool.utts.values() for u in us), key=lambda u: u.id)
    return audio_info(first.path)[1]


# --------------------------------------------------------------------------- dynamic mixing


class DynamicMixingDataset(torch.utils.data.Dataset):
    """Two-speaker mixtures drawn on the fly from a speaker manifest.

    Item ``i`` of epoch ``e`` is drawn with ``numpy.random.default_rng([seed, e, i])``: the same
    ``(seed, epoch, i)`` always gives the same mixture, another epoch gives other ones. Call
    :meth:`set_epoch` at the start of each epoch, in the main process, before the DataLoader
    is iterated (workers copy the dataset when they start; with ``persistent_workers=True``
    they would keep the old epoch).

    Each item pairs two utterances of two different speakers (:func:`draw_pair`), each read as
    a random ``segment_seconds`` crop (only the crop is decoded; the whole utterance when
    shorter, or when ``segment_seconds`` is None), mixed as ``mixing`` says.

    Arguments
    ---------
    manifest : str or Path
        Speaker manifest (``ID, duration, wav, spk_id``; with ``start, stop`` columns, as the
        speaker data prep's ``train.csv`` / ``valid.csv``, only that part of each file is read).
    data_folder : str or Path
        Replaces ``$data_root`` in its paths.
    speakers : list, int, str or path
        Speakers to draw from (as :func:`sepid.data.speakers.select_speakers`); a speaker's class
        is its index in the sorted list.
    n_mix : int
        Items per epoch.
    segment_seconds : float, optional
        Crop length of each source; None: whole utterances.
    sample_rate : int, optional
        Output rate; None: the rate of the first usable file (sorted by ID).
    mixing : MixingOptions, optional
        Levels, length mode, shortest utterance and seed (default: ``MixingOptions()``).
    exclude_utts, include_utts : iterable of str, optional
        Utterance IDs never drawn / the only ones drawn.
    """

    def __init__(
        self,
        manifest,
        data_folder,
        speakers,
        n_mix,
        segment_seconds=None,
        sample_rate=None,
        mixing=None,
        exclude_utts=None,
        include_utts=None,
    ):
        self.mixing = MixingOptions() if mixing is None else mixing
        if int(n_mix) < 1:
            raise ValueError(f"n_mix={n_mix}: a dynamic-mixing epoch needs at least one item.")
        if segment_seconds is not None and segment_seconds <= 0:
            raise ValueError(f"segment_seconds={segment_seconds} must be positive (or None).")
        available, sources = load_sources(manifest, data_folder, self.mixing.min_duration)
        selected = select_speakers(available, speakers, f"manifest {manifest}")
        exclude = set(exclude_utts or ())
        include = None if include_utts is None else set(include_utts)

        def keep(u):
            return u.id not in exclude and (include is None or u.id in include)

        self.pool = make_pool(sources, selected, keep)
        self.pool.check("dynamic mixing", f"manifest {manifest}")
        self.speakers = self.pool.speakers
        self.n_mix = int(n_mix)
        self.segment_seconds = segment_seconds
        self.sample_rate = int(sample_rate or corpus_sample_rate([self.pool]))
        self.epoch = 0

    @classmethod
    def for_split(
        cls,
        split,
        manifest,
        data_folder,
        n_mix,
        split_speakers=None,
        valid_utt_fraction=0.1,
        mixing=None,
        **kwargs,
    ):
        """The dataset of one split with the speakers and utterances that
        :func:`sepid.data.mixture_corpus.make_mixtures` gives it for the same
        ``split_speakers``, ``valid_utt_fraction`` and ``mixing.min_duration`` (train excludes
        the held-out valid utterances when valid shares the train speakers). Other arguments as
        the constructor."""
        if split not in SPLITS:
            raise ValueError(f"split={split!r}: use one of {SPLITS}.")
        mixing = MixingOptions() if mixing is None else mixing
        available, sources = load_sources(manifest, data_folder, mixing.min_duration)
        speakers, valid_from_train = select_split_speakers(
            available, split_speakers, f"manifest {manifest}"
        )
        exclude = include = None
        if valid_from_train and split in ("train", "valid"):
            held = held_out_valid_utterances(sources, speakers["train"], valid_utt_fraction)
            exclude, include = (held, None) if split == "train" else (None, held)
        if len(speakers[split]) < 2:
            raise ValueError(
                f"Split {split!r} of manifest {manifest} has {len(speakers[split])} speaker(s) "
                f"with split_speakers={split_speakers}; a mixture needs two different speakers."
            )
        return cls(
            manifest,
            data_folder,
            speakers[split],
            n_mix,
            mixing=mixing,
            exclude_utts=exclude,
            include_utts=include,
            **kwargs,
        )

    def set_epoch(self, epoch):
        """Selects the epoch whose mixtures are drawn."""
        self.epoch = int(epoch)

    def __len__(self):
        return self.n_mix

    def _read(self, rng, source):
        """A random ``segment_seconds`` crop of the source's part of its file (its ``start`` to
        ``stop``): nothing outside it is read, so a held-out validation segment never is."""
        frames, file_rate, _ = audio_info(source.path)
        first = int(round(source.start * file_rate))
        last = frames if source.stop is None else min(frames, int(round(source.stop * file_rate)))
        want = last - first
        if self.segment_seconds is not None:
            want = min(want, int(round(self.segment_seconds * file_rate)))
        start = first + (
            int(rng.integers(0, last - first - want + 1)) if last - first > want else 0
        )
        if start == 0 and start + want == frames:
            sig = read_audio(source.path, self.sample_rate)
        else:
            sig = read_audio(source.path, self.sample_rate, start=start, stop=start + want)
        if self.segment_seconds is None:
            return sig
        return sig[: int(round(self.segment_seconds * self.sample_rate))]

    def __getitem__(self, index):
        if not 0 <= index < self.n_mix:
            raise IndexError(f"index {index} out of range for {self.n_mix} mixtures")
        rng = np.random.default_rng([self.mixing.seed, self.epoch, int(index)])
        for _ in range(MAX_ATTEMPTS):
            u1, u2 = draw_pair(rng, self.pool)
            level_db, gain_db = self.mixing.draw_levels(rng)
            sig1, sig2 = self._read(rng, u1), self._read(rng, u2)
            try:
                mix, s1, s2 = self.mixing.mix(sig1, sig2, level_db, gain_db)
            except SilentSourceError:
                continue
            break
        else:
            raise ValueError(
                f"No non-silent pair of crops in {MAX_ATTEMPTS} draws (epoch {self.epoch}, item "
                f"{index}): check the audio of the manifest."
            )
        return {
            "id": f"dm_e{self.epoch}_{index:06d}",
            "mix_sig": mix,
            "s1_sig": s1,
            "s2_sig": s2,
            "s1_spk": u1.spk,
            "s2_spk": u2.spk,
            "s1_class": torch.tensor(self.pool.class_of(u1.spk), dtype=torch.long),
            "s2_class": torch.tensor(self.pool.class_of(u2.spk), dtype=torch.long),
            "gain_db": torch.tensor(gain_db, dtype=torch.float32),
            "s1_utt": u1.id,
            "s2_utt": u2.id,
        }


def mixture_collate(batch):
    """Collates :class:`DynamicMixingDataset` items into a SpeechBrain ``PaddedBatch``:
    ``mix_sig``, ``s1_sig``, ``s2_sig`` are ``PaddedData(data [batch, time], lengths)`` (zero
    padded at the end, relative lengths in ``(0, 1]``); ``s1_class``, ``s2_class`` (long) and
    ``gain_db`` (float32) are ``[batch]`` tensors; ``id``, ``*_spk``, ``*_utt`` are lists."""
    return PaddedBatch(batch, padded_keys=["mix_sig", "s1_sig", "s2_sig"])


def written_mixture_dataset(csv_path, data_root, sample_rate, segment_seconds=None, random=True):
    """Written mixtures (:func:`sepid.data.mixture_corpus.make_mixtures`) for training:
    ``s1_sig``, ``s2_sig`` at ``sample_rate``, cut to the same ``segment_seconds`` window (the
    maximum training signal length; random for training, the start for validation,
    ``random=False``; the mixture is their sum, formed in the recipe after augmentation), and the
    speakers ``s1_spk``, ``s2_spk``."""
    dataset = load_manifest(csv_path, data_root, EVAL_MIXTURE_COLUMNS)
    max_len = None if segment_seconds is None else int(segment_seconds * sample_rate)

    @sb.utils.data_pipeline.takes("s1_wav", "s2_wav")
    @sb.utils.data_pipeline.provides("s1_sig", "s2_sig")
    def sources(s1_wav, s2_wav):
        s1, s2 = read_audio(s1_wav, sample_rate), read_audio(s2_wav, sample_rate)
        length = min(s1.shape[0], s2.shape[0])
        start = 0
        if max_len is not None and length > max_len:
            if random:
                start = int(torch.randint(0, length - max_len + 1, ()).item())
            length = max_len
        yield s1[start : start + length]
        yield s2[start : start + length]

    dataset.add_dynamic_item(sources)
    dataset.set_output_keys(["id", "s1_sig", "s2_sig", "s1_spk", "s2_spk"])
    return dataset

"""Data pipelines of the separation evaluation: mixtures with their references at the
separator's rate, clean sources at the speaker model's rate, and enrolment utterances."""

import logging

import speechbrain as sb

from sepid.data.audio import audio_info, read_audio
from sepid.data.dataio import load_manifest
from sepid.data.manifest import read_csv, resolve_path
from sepid.data.schema import EVAL_MIXTURE_COLUMNS, UTTERANCE_COLUMNS
from sepid.training.distributed import shard

logger = logging.getLogger(__name__)


def mixture_dataset(test_csv, data_root, separator_rate, speaker_rate=None):
    """The mixtures of ``test_csv`` (``$data_root`` = ``data_root``), longest first; returns the
    dataset and the corpus's sample rate. ``mix_sig``, ``s1_sig``, ``s2_sig`` are at ``separator_rate``
    (resampled once, here); ``s1_spk_sig``, ``s2_spk_sig`` at ``speaker_rate`` when given."""
    dataset = load_manifest(test_csv, data_root, EVAL_MIXTURE_COLUMNS)
    first = dataset.data[dataset.data_ids[0]]["mix_wav"]
    corpus_rate = audio_info(first)[1]

    @sb.utils.data_pipeline.takes("mix_wav", "s1_wav", "s2_wav")
    @sb.utils.data_pipeline.provides("mix_sig", "s1_sig", "s2_sig")
    def separator_signals(mix_wav, s1_wav, s2_wav):
        for path in (mix_wav, s1_wav, s2_wav):
            yield read_audio(path, separator_rate)

    dataset.add_dynamic_item(separator_signals)
    keys = ["id", "mix_sig", "s1_sig", "s2_sig", "s1_spk", "s2_spk"]
    if speaker_rate is not None:

        @sb.utils.data_pipeline.takes("s1_wav", "s2_wav")
        @sb.utils.data_pipeline.provides("s1_spk_sig", "s2_spk_sig")
        def speaker_signals(s1_wav, s2_wav):
            for path in (s1_wav, s2_wav):
                yield read_audio(path, speaker_rate)

        dataset.add_dynamic_item(speaker_signals)
        keys += ["s1_spk_sig", "s2_spk_sig"]
    dataset.set_output_keys(keys)
    mine = set(shard(dataset.data_ids))  # each rank evaluates its share (gathered at the end)
    dataset = dataset.filtered_sorted(
        key_test={"id": lambda k: k in mine}, sort_key="duration", reverse=True
    )
    return dataset, corpus_rate


def mixture_speakers(test_csv):
    """Every speaker appearing in the mixtures of ``test_csv``."""
    rows = read_csv(test_csv, EVAL_MIXTURE_COLUMNS)
    if not rows:  # else the enrolment manifest would be blamed for covering none of them
        raise ValueError(
            f"Mixture manifest {test_csv} has no rows: write test mixtures with "
            "data_prep/make_mixtures.py (--n_test > 0) into the folder the recipe reads "
            "(--data_folder of recipes/separation, --mixture_folder of recipes/joint)."
        )
    return {r["s1_spk"] for r in rows} | {r["s2_spk"] for r in rows}


def enrolment_signals(enrol_csv, enrol_data_folder, speakers, sample_rate):
    """Clean enrolment utterances (speaker -> signals at the speaker model's ``sample_rate``) of
    ``speakers`` (those of the test mixtures, :func:`mixture_speakers`), from ``enrol_csv``
    (resolved against ``enrol_data_folder``). Mixture speakers without enrolment are logged;
    their outputs can't be identified by embedding and are excluded from that accuracy (and
    counted)."""
    csv_path, root = enrol_csv, enrol_data_folder
    if csv_path is None or root is None:
        raise ValueError(
            "Speaker identification needs enrolment utterances: pass --enrol_csv (a manifest "
            "with utterances of the mixture speakers, e.g. the speaker data prep's "
            "iden_enrol.csv) and --enrol_data_folder (the corpus it resolves against)."
        )
    wanted = set(speakers)
    signals = {}
    for row in read_csv(csv_path, UTTERANCE_COLUMNS):
        if row["spk_id"] in wanted:
            wav = resolve_path(row["wav"], root)
            signals.setdefault(row["spk_id"], []).append(read_audio(wav, sample_rate))
    missing = sorted(wanted - set(signals))
    if missing:
        logger.warning(
            "%d mixture speaker(s) have no enrolment in %s (e.g. %s)",
            len(missing),
            csv_path,
            missing[:5],
        )
    if len(signals) < 2:
        raise ValueError(
            f"Enrolment manifest {csv_path} covers {len(signals)} of the mixture speakers; "
            "identification needs at least two. Pass --enrol_csv with utterances of the mixture "
            "speakers (e.g. the iden_enrol.csv of their data prep)."
        )
    return signals


def log_rates(corpus_rate, separator_rate, separator):
    """States, once, at which rate the mixtures are and at which every metric is computed."""
    if corpus_rate != separator_rate:
        logger.info(
            "Mixtures are at %d Hz and %s runs at %d Hz: mixtures and references are resampled "
            "once to %d Hz; every separation metric is at %d Hz.",
            corpus_rate,
            separator,
            separator_rate,
            separator_rate,
            separator_rate,
        )

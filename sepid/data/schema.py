"""The manifests' schemas: the one home of every column list and file name that one part of the
project writes and another reads. Writers (:mod:`sepid.data.prep`,
:mod:`sepid.data.mixture_corpus`, the speaker recipe) and readers (the ``dataio_prep`` of the
recipes, the evaluations, the export) import them from here.

Speaker data prep (``prepare_voxceleb``, ``prepare_folder``; see :mod:`sepid.data.prep`), in its
``save_folder``:

- utterance manifests, :data:`UTTERANCE_COLUMNS` (``duration`` in seconds, ``wav`` as
  ``$data_root/<path>``): :data:`IDEN_ENROL_CSV`, :data:`IDEN_TEST_CSV`, :data:`VERI_UTTS_CSV`;
- segment manifests, :data:`SEGMENT_COLUMNS` (also ``start, stop``, seconds: the part of the
  file a row stands for): :data:`TRAIN_CSV`, :data:`VALID_CSV`;
- the trial list :data:`VERI_TRIALS_CSV`, :data:`TRIAL_COLUMNS` (``label`` 1 target, 0 not;
  ``enrol``, ``test`` utterance IDs of :data:`VERI_UTTS_CSV`);
- :data:`BAD_FILES_TXT` (``path<TAB>reason`` lines) and :data:`PREP_OPTIONS_FILE`.

Mixture corpus (``make_mixtures``; see :mod:`sepid.data.mixture_corpus`), in its
``save_folder``: ``<split>.csv`` (:func:`mixture_csv`), :data:`MIXTURE_COLUMNS`, of which the
separation recipes read :data:`EVAL_MIXTURE_COLUMNS`; :data:`SPEAKERS_JSON`;
:data:`PREP_OPTIONS_FILE`.

Speaker training run (``recipes/speaker/train.py``), in its ``save_folder``:
:data:`LABEL_ENCODER_FILE`, the classes of the classifier head.
"""

UTTERANCE_COLUMNS = ("ID", "duration", "wav", "spk_id")
SEGMENT_COLUMNS = (*UTTERANCE_COLUMNS, "start", "stop")
TRIAL_COLUMNS = ("label", "enrol", "test")

TRAIN_CSV = "train.csv"
VALID_CSV = "valid.csv"
IDEN_ENROL_CSV = "iden_enrol.csv"
IDEN_TEST_CSV = "iden_test.csv"
VERI_TRIALS_CSV = "veri_trials.csv"
VERI_UTTS_CSV = "veri_utts.csv"
BAD_FILES_TXT = "bad_files.txt"
PREP_OPTIONS_FILE = "prep_options.json"

# the speaker prep's outputs by key (the keys of the prepare functions' returned dict)
SPLIT_FILES = {
    "train": TRAIN_CSV,
    "valid": VALID_CSV,
    "iden_enrol": IDEN_ENROL_CSV,
    "iden_test": IDEN_TEST_CSV,
}
TRIAL_FILES = {"veri_trials": VERI_TRIALS_CSV, "veri_utts": VERI_UTTS_CSV}

MIXTURE_COLUMNS = (
    "ID",
    "duration",
    "mix_wav",
    "s1_wav",
    "s2_wav",
    "s1_spk",
    "s2_spk",
    "s1_class",
    "s2_class",
    "gain_db",
    "s1_utt",
    "s2_utt",
)
# the columns of MIXTURE_COLUMNS that the separation evaluation and joint training read
EVAL_MIXTURE_COLUMNS = MIXTURE_COLUMNS[:7]
SPEAKERS_JSON = "speakers.json"

LABEL_ENCODER_FILE = "label_encoder.txt"


def mixture_csv(split):
    """File name of a mixture corpus's manifest of ``split`` (``train``, ``valid``, ``test``)."""
    return f"{split}.csv"

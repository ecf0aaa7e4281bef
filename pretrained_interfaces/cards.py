"""The model cards (``README.md``) of an exported speaker model and joint model: Hub metadata
(valid for ``huggingface_hub.ModelCard``, with a ``model-index``) and the text a user of the
published model reads. Everything in them comes from the run (its resolved ``hyperparams.yaml``,
manifests, ``eval/metrics.json``) and says what the model really is; nothing machine-specific
(paths are relative to the repository, placeholders or Hub ids)."""

import shlex
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from pretrained_interfaces.folder import JOINT_CLASS
from pretrained_interfaces.runs import (
    base_model_origin,
    manifest_size,
    portable,
    training_command,
)

# Training data named in a card: (Hub dataset id, display name, licence and attribution).
KNOWN_DATASETS = {
    "librispeech": (
        "openslr/librispeech_asr",
        "LibriSpeech",
        "CC BY 4.0 (LibriSpeech, Panayotov et al., ICASSP 2015, https://www.openslr.org/12)",
    ),
    "voxceleb": (
        "voxceleb",
        "VoxCeleb",
        "CC BY 4.0 (VoxCeleb1/2, Nagrani et al. 2017, Chung et al. 2018; the videos' copyright "
        "remains with their owners)",
    ),
}
# Packages the exported custom_interface.py imports (torch and torchaudio are a matched pair).
INTERFACE_PACKAGES = ("torch", "torchaudio", "speechbrain", "transformers")
UNITS = (
    "Units: EER, TAR, accuracies and STOI in %; SI-SDR, SDR and their improvements in dB; "
    "PESQ on its MOS-LQO scale (1-4.5); minDCF is the normalised detection cost (no unit)."
)
REFERENCES = (
    "WavLM (Chen et al., IEEE JSTSP 2022); LoRA (Hu et al., ICLR 2022); ArcFace (Deng et al., "
    "CVPR 2019); SpeechBrain (Ravanelli et al., 2021)."
)


def install_line():
    """``pip install`` of the exact versions this export was made and checked with."""
    pins = []
    for name in INTERFACE_PACKAGES:
        try:
            pins.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            pins.append(name)
    return "pip install " + " ".join(shlex.quote(p) for p in pins)


def install_and_load(name, source, classname):
    """A card's "Install" section and the start of its "Usage" block, up to loading the
    interface as ``name``."""
    return [
        "## Install",
        "",
        "The exact versions this folder was exported and checked with (torch and torchaudio "
        "must be a matched pair):",
        "",
        "```bash",
        install_line(),
        "```",
        "",
        "## Usage",
        "",
        "```python",
        "from speechbrain.inference.interfaces import foreign_class",
        "",
        f'{name} = foreign_class(source="{source}", pymodule_file="custom_interface.py",',
        f'{" " * (len(name) + 17)}classname="{classname}")',
    ]


def _dataset_key(folder):
    low = str(folder or "").lower()
    return next((key for key in KNOWN_DATASETS if key in low), None)


def dataset_info(folders, datasets=None):
    """``(hub ids, licence lines)`` of the training/evaluation data: ``datasets`` (``--dataset``)
    when given, else recognised from the folder names; unknown data is said to be unknown."""
    keys = [k for k in dict.fromkeys(_dataset_key(f) for f in folders) if k]
    ids = list(datasets) if datasets else [KNOWN_DATASETS[k][0] for k in keys]
    lines = [f"{KNOWN_DATASETS[k][1]}: {KNOWN_DATASETS[k][2]}" for k in keys]
    if not keys:
        lines.append(
            "the training data's licence is not recorded (not a corpus this tool recognises): "
            "check it before redistributing this model"
        )
    return ids, lines


def _data_label(folder):
    """A data folder as a card names it: the repository-relative path, else its last part."""
    shown = portable(folder, None)
    return shown if shown else Path(str(folder)).name


def _pct(value, digits=2):
    return None if value is None else round(100 * float(value), digits)


def _card(card_data, lines):
    from huggingface_hub import ModelCard

    card = ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines))
    ModelCard(str(card))  # parses back: valid front matter
    return card


# What each placeholder of a card's training command stands for.
PLACEHOLDERS = {
    "<output_folder>": "a new folder for the run's outputs",
    "<data_folder>": "your copy of the training corpus",
    "<eval_data_folder>": "your copy of the evaluation corpus",
    "<wavlm_source>": "the base WavLM, a Hub id or a folder (the tiny random one: "
    "`python -c \"from sepid.tiny import save_tiny_wavlm; save_tiny_wavlm('tiny-wavlm')\"`)",
    "<separator_source>": "the SepFormer, a Hub id or a folder (the tiny random one: "
    '`python -c "from sepid.tiny import save_tiny_sepformer; '
    "save_tiny_sepformer('tiny-sepformer')\"`)",
    "<speaker_source>": "the exported speaker model (pretrained_interfaces/export.py), a "
    "folder or Hub id",
    "<speaker_manifest>": "the speaker run's `prep/train.csv`",
    "<mixture_folder>": "test mixtures written by `data_prep/make_mixtures.py`",
    "<enrol_csv>": "enrolment utterances of the mixture speakers (e.g. the speaker run's "
    "`prep/iden_enrol.csv`)",
}


def _command_notes(notes):
    lines = []
    for name, shown in notes.items():
        what = PLACEHOLDERS.get(name, "your own")
        if shown and not shown.startswith("<"):
            what += f"; in this run `{shown}` (repository-relative)"
        lines.append(f"  - `{name}`: {what}")
    return lines


# ------------------------------------------------------------------------ speaker ---
def speaker_training_text(hparams):
    """How the speaker branch was trained: LoRA only when its rank is positive."""
    rank = int(hparams.get("lora_rank") or 0)
    frozen = bool(hparams.get("freeze_backbone", True))
    lora = (
        f"LoRA rank {rank} (alpha {hparams.get('lora_alpha')}) on "
        f"{', '.join(hparams.get('lora_targets') or [])}"
    )
    if frozen and rank > 0:
        return f"frozen WavLM backbone adapted with {lora}, plus pooling, projection and head"
    if frozen:
        return "frozen WavLM backbone + trained pooling, projection and head (no LoRA)"
    return "whole model fine-tuned (WavLM, pooling, projection, head)" + (
        f", with {lora}" if rank > 0 else ""
    )


def verification_sets(hparams, metrics_sets):
    """``{set name in metrics.json: (label, size text)}`` of the speaker evaluation."""
    eval_folder = hparams.get("eval_data_folder") or hparams.get("data_folder")
    label = _data_label(eval_folder)
    veri_file = hparams.get("verification_file")
    trials_from = Path(str(veri_file)).name if veri_file else "generated balanced trials"
    prep = hparams.get("eval_prep_folder")
    utts = manifest_size(Path(prep) / "veri_utts.csv") if prep else None
    sets = {}
    for name, kinds in metrics_sets.items():
        if name.startswith("identification_"):
            values = next(iter(kinds.values()), {})
            who = "training" if name.endswith("train_speakers") else "held-out evaluation"
            sets[name] = (
                f"{label} identification ({who} speakers)",
                f"{values.get('n', '?')} test utterances of {values.get('n_speakers') or values.get('n_classes', '?')} speakers",
            )
        else:
            values = next(iter(kinds.values()), {})
            trials = values.get("n_target", 0) + values.get("n_nontarget", 0)
            size = (f"{utts[0]} utterances of {utts[1]} speakers, " if utts else "") + (
                f"{trials} trials ({values.get('n_target', '?')} target)"
            )
            sets[name] = (f"{label} {name} ({trials_from})", size)
    return sets


MODEL_NAMES = {
    "finetuned": "this model",
    "pretrained": "base model, untrained head-free embedding (baseline)",
    "exported": "this model (exported)",
    "baseline": "baseline",
    "fbank": "filterbank statistics (training-free baseline)",
}


def model_card(
    *,
    hparams,
    run_folder,
    checkpoint,
    metrics,
    threshold,
    adapters,
    n_speakers,
    title,
    source,
    license="apache-2.0",
    datasets=None,
):
    """README.md of a speaker model: Hub metadata (title, licence, datasets, base model, tags,
    model-index) and text (what it is, install, usage, every metric with its set and size,
    the training command, data licence, limitations)."""
    from huggingface_hub import EvalResult, ModelCardData

    data_folder = hparams.get("data_folder")
    eval_folder = hparams.get("eval_data_folder") or data_folder
    base_shown, pretrained, base_text = base_model_origin(hparams.get("wavlm_source"), "wavlm")
    dataset_ids, licence_lines = dataset_info([data_folder, eval_folder], datasets)
    rank = int(hparams.get("lora_rank") or 0)
    models = (metrics or {}).get("models", {})
    sets = verification_sets(hparams, {k: v for m in models.values() for k, v in m.items()})

    eval_results, table = [], []
    order = sorted(models, key=lambda t: (t != "finetuned", t))
    for tag in order:
        for set_name, kinds in models[tag].items():
            label, size = sets[set_name]
            for kind, m in kinds.items():
                if set_name.startswith("identification_"):
                    row = ("identification", kind, None, None, None, m.get("top1"), m.get("top5"))
                else:
                    row = (
                        "verification",
                        kind,
                        m.get("eer"),
                        m.get("min_dcf@0.01"),
                        m.get("tar@far=0.01"),
                        None,
                        None,
                    )
                table.append((tag, label, size, *row))
                if tag != "finetuned":
                    continue
                task = (
                    ("speaker-identification", "Speaker identification")
                    if row[0] == "identification"
                    else ("speaker-verification", "Speaker verification")
                )
                for metric, name, value in (
                    ("eer", f"EER % ({kind})", _pct(row[2], 4)),
                    (
                        "min_dcf",
                        f"minDCF p=0.01 ({kind})",
                        None if row[3] is None else round(float(row[3]), 4),
                    ),
                    ("accuracy", f"top-1 accuracy % ({kind})", _pct(row[5], 4)),
                ):
                    if value is not None:
                        eval_results.append(
                            EvalResult(
                                task_type=task[0],
                                task_name=task[1],
                                dataset_type=dataset_ids[0] if dataset_ids else "custom",
                                dataset_name=f"{label}: {size}",
                                metric_type=metric,
                                metric_name=name,
                                metric_value=value,
                            )
                        )
    tags = [
        "speechbrain",
        "speaker-verification",
        "speaker-identification",
        "speaker-embedding",
        "wavlm",
        "arcface",
        "pytorch",
    ]
    if rank > 0:
        tags.append("lora")
    if pretrained is False:
        tags.append("random-init")
    card_data = ModelCardData(
        library_name="speechbrain",
        license=license,
        tags=tags,
        datasets=dataset_ids or None,
        pipeline_tag="audio-classification",
        base_model=base_shown if pretrained else None,
        model_name=title,
        eval_results=eval_results or None,
    )
    script = "recipes/speaker/train.py"
    train_cmd, notes = training_command(run_folder, script)
    eval_cmd = train_cmd.replace(shlex.quote(script), "recipes/speaker/evaluate.py", 1)
    train_size = manifest_size(hparams.get("train_csv"))
    counter = Path(checkpoint.path) / "counter.ckpt"
    epochs = counter.read_text().strip() if counter.is_file() else "?"
    backbone = hparams["encoder"].backbone.config
    weights = (
        f"LoRA adapters and head only; the base WavLM weights are fetched from `{base_shown}` "
        "when the model loads."
        if adapters
        else "everything merged into one set of weights: the folder is self-contained and loads "
        "offline, with no base-model download."
    )
    lines = [
        f"# {title}",
        "",
        "Speaker embeddings for verification and identification with a "
        f"{'frozen' if hparams.get('freeze_backbone', True) else 'fine-tuned'} WavLM "
        f"({speaker_training_text(hparams)}), "
        f"{hparams.get('pooling')} pooling, a {hparams.get('embedding_dim')}-dimensional "
        f"embedding trained with an ArcFace (additive angular margin) head on {n_speakers} "
        "speakers. Audio is mono 16 kHz; other rates and channel counts are converted on load.",
        "",
        f"- Base model: {base_text} ({backbone.num_hidden_layers} layers x "
        f"{backbone.hidden_size}).",
        f"- Weights: {weights}",
        "",
        *install_and_load("spk", source, "WavLMSpeakerInterface"),
        'score, same = spk.verify_files("a.wav", "b.wav")  # cosine score, score > threshold',
        'emb = spk.encode_file("a.wav")                     # L2-normalised embedding',
        'top = spk.classify_file("a.wav", topk=5)           # [(training speaker, score), ...]',
        "```",
        "",
        "A private repo or another revision: `foreign_class(..., fetch_config=FetchConfig("
        'token=True, revision="v1"))` (`from speechbrain.utils.fetching import FetchConfig`; '
        "the token from `HF_TOKEN` or `hf auth login`).",
        "",
        "`verify_files(a, b, threshold=...)` overrides the stored threshold "
        + (
            f"({threshold:.6f}, the cosine EER threshold on the evaluation trials)."
            if threshold is not None
            else "(none stored: this model was not evaluated, so pass one)."
        ),
        "",
        "## Results",
        "",
    ]
    if table:
        lines += [
            f"Measured by `{eval_cmd}` (the training command's YAML and overrides). {UNITS}",
            "",
            "| model | test set | size | task | scoring | EER % | minDCF p=0.01 | TAR % at FAR 1 % "
            "| top-1 % | top-5 % |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for tag, label, size, task, kind, eer, dcf, tar, top1, top5 in table:
            cells = [
                _pct(eer),
                None if dcf is None else f"{float(dcf):.4f}",
                _pct(tar),
                _pct(top1),
                _pct(top5),
            ]
            shown = ["" if c is None else str(c) for c in cells]
            lines.append(
                f"| {MODEL_NAMES.get(tag, tag)} | {label} | {size} | {task} | {kind} | "
                + " | ".join(shown)
                + " |"
            )
    else:
        lines.append("Not evaluated (no eval/metrics.json in the training run).")
    lines += [
        "",
        "## Training",
        "",
        f"- Data: `{_data_label(data_folder)}`"
        + (f", {train_size[0]} training utterances" if train_size else "")
        + f", {n_speakers} speakers. Licence: {'; '.join(licence_lines)}.",
        "- Command (from the repository root; replace the placeholders):",
        "",
        "```bash",
        train_cmd,
        "```",
        "",
        *_command_notes(notes),
        f"- Best checkpoint after epoch {epochs} (lowest validation error), lr "
        f"{hparams.get('lr')}, batch {hparams.get('batch_size')}, crops of "
        f"{hparams.get('segment_seconds')} s, ArcFace margin {hparams.get('margin')} scale "
        f"{hparams.get('scale')}.",
        "",
        "## Limitations",
        "",
        *(
            [
                "- **The base model was randomly initialised** (no pretrained weights): the "
                "numbers above are those of a pipeline demonstration, not of a usable speaker "
                "model."
            ]
            if pretrained is False
            else []
        ),
        "- `classify_file` only knows the training speakers; for other people compare "
        "embeddings (`encode_file`, `verify_files`).",
        "- The stored threshold is the EER point of the evaluation trials; other data (language, "
        "channel, duration) needs its own threshold.",
        "- Inputs longer than `chunk_seconds` are embedded in chunks and averaged.",
        f"- Model licence: {license}. Training data: {'; '.join(licence_lines)}.",
        "",
        "## References",
        "",
        REFERENCES,
        "",
    ]
    return _card(card_data, lines)


# -------------------------------------------------------------------------- joint ---
SEPARATION_METRICS = (  # key, label, unit scale (None: as stored)
    ("si_sdri", "SI-SDRi dB", None),
    ("si_sdr", "SI-SDR dB", None),
    ("sdri", "SDRi dB", None),
    ("sdr", "SDR dB", None),
    ("sir", "SIR dB", None),
    ("sar", "SAR dB", None),
    ("pesq", "PESQ", None),
    ("stoi", "STOI %", 100),
)


def joint_rows(metrics, separator_tag):
    """``(system, {key: mean})`` separation rows: the unprocessed mixture, every system."""
    systems = (metrics or {}).get("systems", {})
    rows = []
    if separator_tag in systems:
        rows.append(("unprocessed mixture", systems[separator_tag].get("mixture", {})))
    elif systems:
        rows.append(("unprocessed mixture", next(iter(systems.values())).get("mixture", {})))
    for name, report in systems.items():
        shown = "this model (joint)" if name == "joint model" else f"{name} (baseline)"
        rows.append((shown, report.get("separation", {})))
    return rows


def joint_model_card(
    *,
    hparams,
    run_folder,
    checkpoint,
    metrics,
    title,
    source,
    threshold=None,
    threshold_origin=None,
    license="apache-2.0",
    datasets=None,
):
    """README.md of a joint model: Hub metadata and text, with every metric of
    ``eval/metrics.json`` (the mixture, the baseline separator and speaker model, the joint
    model; separation and identification on separated outputs)."""
    from huggingface_hub import EvalResult, ModelCardData

    rate = hparams["sample_rate"]
    data_folder = hparams.get("data_folder")
    dataset_ids, licence_lines = dataset_info([data_folder], datasets)
    sep_shown, sep_pretrained, sep_text = base_model_origin(
        hparams.get("separator_source"), "sepformer"
    )
    spk_shown, spk_pretrained, spk_text = base_model_origin(
        hparams.get("speaker_source"), "speaker export"
    )
    wavlm_shown, wavlm_pretrained, wavlm_text = base_model_origin(
        hparams.get("wavlm_source"), "wavlm"
    )
    systems = (metrics or {}).get("systems", {})
    n_mix = next((r.get("n_mixtures") for r in systems.values()), None)
    mix_label = portable(hparams.get("mixture_folder"), "<mixture_folder>")
    test_set = f"{mix_label}/test.csv ({n_mix} two-speaker mixtures at {rate} Hz)"
    separator_tag = hparams.get("separator_tag", "pretrained separator")
    rows = joint_rows(metrics, separator_tag)
    eval_results = []
    joint = systems.get("joint model", {})
    for key, label, scale in SEPARATION_METRICS:
        mean = joint.get("separation", {}).get(key, {}).get("mean")
        if mean is not None:
            eval_results.append(
                EvalResult(
                    task_type="audio-to-audio",
                    task_name="Speech separation",
                    dataset_type=dataset_ids[0] if dataset_ids else "custom",
                    dataset_name=test_set,
                    metric_type=key,
                    metric_name=label,
                    metric_value=round(float(mean) * (scale or 1), 4),
                )
            )
    identification = []  # (system, model, condition, method, accuracy %, n)
    for system, report in systems.items():
        for model, conditions in report.get("speaker_identification", {}).items():
            for condition, methods in conditions.items():
                for method, acc in methods.items():
                    identification.append(
                        (system, model, condition, method, _pct(acc.get("accuracy")), acc.get("n"))
                    )
                    if (
                        system == "joint model"
                        and condition == "separated"
                        and acc.get("accuracy") is not None
                    ):
                        eval_results.append(
                            EvalResult(
                                task_type="audio-classification",
                                task_name="Speaker identification on separated outputs",
                                dataset_type=dataset_ids[0] if dataset_ids else "custom",
                                dataset_name=test_set,
                                metric_type="accuracy",
                                metric_name=f"speaker accuracy % ({method})",
                                metric_value=_pct(acc["accuracy"], 4),
                            )
                        )
    tags = [
        "speechbrain",
        "audio-source-separation",
        "sepformer",
        "speaker-identification",
        "wavlm",
        "pytorch",
    ]
    if int(hparams.get("lora_rank") or 0) > 0:
        tags.append("lora")
    if sep_pretrained is False or wavlm_pretrained is False or spk_pretrained is False:
        tags.append("random-init")
    base = [s for s, p in ((sep_shown, sep_pretrained), (spk_shown, spk_pretrained)) if p]
    card_data = ModelCardData(
        library_name="speechbrain",
        license=license,
        tags=tags,
        datasets=dataset_ids or None,
        pipeline_tag="audio-to-audio",
        base_model=base or None,
        model_name=title,
        eval_results=eval_results or None,
    )
    script = "recipes/joint/train.py"
    train_cmd, notes = training_command(run_folder, script)
    eval_cmd = train_cmd.replace(shlex.quote(script), "recipes/joint/evaluate.py", 1)
    n_speakers = hparams["classifier"].weight.shape[0]
    chunk = hparams.get("separation_chunk_seconds", 30.0)
    chunking = (
        f"- Mixtures longer than {chunk} s are separated in chunks overlapping by "
        f"{hparams.get('separation_overlap_seconds', 2.0)} s (`separation_chunk_seconds`, "
        "`separation_overlap_seconds` in hyperparams.yaml), each chunk's sources put in the "
        "previous chunk's order by their correlation on the overlap: memory stays that of one "
        "chunk, but a speaker silent throughout an overlap may change outputs there."
        if chunk is not None
        else "- Mixtures are separated in one pass: memory grows with their length (set "
        "`separation_chunk_seconds` in hyperparams.yaml to bound it)."
    )
    verification = (
        f"`sep.verify_files(a, b)` compares two files with the jointly trained speaker branch "
        f"at threshold {threshold:.6f} ({threshold_origin}); pass `threshold=...` for your data."
        if threshold is not None
        else "`sep.verify_files(a, b)` needs `threshold=...`: no verification threshold was "
        "measured for this model (export with `--threshold`, or from a speaker source that "
        "has one)."
    )
    lines = [
        f"# {title}",
        "",
        f"Separates {hparams['num_spks']}-speaker mixtures (SepFormer at {rate} Hz) and names the "
        f"speaker of each separated source (WavLM speaker branch at "
        f"{hparams['speaker_sample_rate']} Hz, {speaker_training_text(hparams)}; "
        f"{n_speakers} training speakers, or your own after `enrol`). The two were trained "
        "together: permutation-invariant SI-SNR plus the speaker loss on each separated output. "
        "Everything is merged into one set of weights: the folder is self-contained and loads "
        "offline.",
        "",
        f"- Separator initialised from {sep_text}.",
        f"- Speaker branch initialised from {spk_text}"
        + (
            f" (its WavLM: {wavlm_text})"
            if hparams.get("wavlm_source") and spk_pretrained is not False
            else ""
        )
        + ".",
        "",
        *install_and_load("sep", source, JOINT_CLASS),
        'for s in sep.separate_file("mixture.wav", save_folder="out/"):',
        "    print(s.path, s.speaker, s.score)       # s.signal, s.embedding",
        'sep.enrol({"alice": ["alice1.wav"], "bob": ["bob1.wav"]})  # name outputs by your speakers',
        "```",
        "",
        verification,
        "",
        "A private repo or another revision: `foreign_class(..., fetch_config=FetchConfig("
        'token=True, revision="v1"))` (`from speechbrain.utils.fetching import FetchConfig`).',
        "",
        "## Results",
        "",
    ]
    if systems:
        keys = [
            (k, label, scale)
            for k, label, scale in SEPARATION_METRICS
            if any(k in summary for _, summary in rows)
        ]
        lines += [
            f"Test set: {test_set}. Measured by `{eval_cmd}` (the training command's YAML and "
            f"overrides, with `--mixture_folder`). {UNITS}",
            "",
            "Separation (mean over the test mixtures):",
            "",
            "| system | " + " | ".join(label for _, label, _ in keys) + " |",
            "|---|" + "---|" * len(keys),
        ]
        for name, summary in rows:
            cells = []
            for key, _, scale in keys:
                mean = summary.get(key, {}).get("mean")
                cells.append("" if mean is None else f"{float(mean) * (scale or 1):.2f}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Speaker identification (accuracy % over the outputs, n outputs scored):",
            "",
            "| system | speaker model | input | method | accuracy % | n |",
            "|---|---|---|---|---|---|",
        ]
        for system, model, condition, method, acc, n in identification:
            shown = {
                "separated": "separated outputs",
                "clean": "clean sources",
                "mixture": "unprocessed mixture",
            }.get(condition, condition)
            if system != "joint model":
                model = f"{model} (the speaker source)"
            lines.append(
                f"| {system} | {model} | {shown} | {method} | "
                f"{'' if acc is None else f'{acc:.2f}'} | {n} |"
            )
    else:
        lines.append("Not evaluated (no eval/metrics.json in the training run).")
    lines += [
        "",
        "## Training",
        "",
        f"- Data: dynamic mixtures of `{_data_label(data_folder)}` ({n_speakers} speakers). "
        f"Licence: {'; '.join(licence_lines)}.",
        "- Command (from the repository root; replace the placeholders):",
        "",
        "```bash",
        train_cmd,
        "```",
        "",
        *_command_notes(notes),
        f"- Best checkpoint by validation SI-SNRi ({Path(checkpoint.path).name}).",
        "",
        "## Limitations",
        "",
        *(
            [
                "- **Randomly initialised base models** (no pretrained weights): the numbers "
                "above are those of a pipeline demonstration, not of a usable model."
            ]
            if "random-init" in tags
            else []
        ),
        f"- {hparams['num_spks']} sources per mixture; other rates and channel counts are "
        "converted on load.",
        "- Without `enrol`, each source is named by the closest training speaker, whoever it is: "
        "read `score` before trusting a name. After `enrol`, an output whose best score is "
        "below `enrol_threshold` (hyperparams.yaml, or `enrol(..., threshold=...)`) is named "
        "`unknown`.",
        chunking,
        f"- Model licence: {license}. Training data: {'; '.join(licence_lines)}.",
        "",
        "## References",
        "",
        "SepFormer (Subakan et al., ICASSP 2021); " + REFERENCES,
        "",
    ]
    return _card(card_data, lines)

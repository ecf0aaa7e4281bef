#!/usr/bin/env python3
"""Exports a trained speaker model (or joint separation + speaker model) as a Hub-ready
SpeechBrain folder, and publishes it.

From the output folder of ``recipes/speaker/train.py`` (its ``hyperparams.yaml``, the best
checkpoint in ``save/`` by ``error_rate`` and ``save/label_encoder.txt``, plus
``eval/metrics.json`` when ``recipes/speaker/evaluate.py`` ran) it writes::

    hyperparams.yaml     modules + pretrainer (pretrained_interfaces/speaker/hyperparams.yaml,
                         filled in), incl. the verification threshold (EER threshold)
    custom_interface.py  WavLMSpeakerInterface (encode / verify / classify)
    embedder.ckpt        WavLM with LoRA merged in, pooling and projection (default), or only the
                         adapters and head (--adapters; base weights then come from the base model)
    classifier.ckpt      the ArcFace head (identification of the training speakers)
    label_encoder.ckpt   the training speakers
    README.md            model card (Hub metadata, metrics, training, usage, limitations)

From the output folder of ``recipes/joint/train.py`` (recognised by its YAML) it writes the joint
model instead (:func:`export_joint`): ``encoder.ckpt``, ``masknet.ckpt``, ``decoder.ckpt`` (the
SepFormer), ``embedder.ckpt`` (the speaker branch, LoRA merged), ``classifier.ckpt``,
``label_encoder.ckpt``, ``hyperparams.yaml`` (pretrained_interfaces/sepformer_speaker/, with the
run's chunking of long mixtures), ``custom_interface.py`` (``SepformerSpeakerInterface``, the
speaker interface's code and ``sepid/separation/separator.py``'s chunked separation inlined) and the model
card.

The folder is written next to ``--out`` under a temporary name, loaded back and checked against
the checkpoint, then renamed: an interrupted export leaves nothing half-written.

To run::

    python pretrained_interfaces/export.py results/wavlm-lora-arcface/1986 --out exported/spk
    python pretrained_interfaces/export.py results/wavlm-lora-arcface/1986 --out exported/spk \\
        --push me/wavlm-lora-spk [--private] [--revision v1]

``--push`` uploads with ``huggingface_hub`` (token from ``HF_TOKEN`` or ``hf auth login``; the
endpoint from ``HF_ENDPOINT``); the token is never printed or logged.
"""

import argparse
import functools
import importlib.util
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from sepid.data.schema import LABEL_ENCODER_FILE

logger = logging.getLogger(__name__)

INTERFACE_DIR = Path(__file__).resolve().parent / "speaker"
INTERFACE_FILE = "custom_interface.py"
INTERFACE_CLASS = "WavLMSpeakerInterface"
# |exported - checkpoint| allowed on the self-check embeddings (float32, merged weights)
SELF_CHECK_ATOL = 1e-4


class PublishError(RuntimeError):
    """Pushing to the Hub failed; the message says why and where the folder is."""


@functools.lru_cache(maxsize=1)
def interface_module():
    """``pretrained_interfaces/speaker/custom_interface.py``, imported by path (it is the file
    every exported folder carries, so it is not part of an installed package)."""
    name = "sepid_export_speaker_interface"
    spec = importlib.util.spec_from_file_location(name, INTERFACE_DIR / INTERFACE_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ training run ---
def _check_output_folder(run_folder, recipe="recipes/speaker/train.py"):
    """The run's resolved ``hyperparams.yaml`` (path and text); it must name ``run_folder`` as
    seen from here, since its relative paths resolve from where the training ran."""
    run_folder = Path(run_folder)
    yaml_file = run_folder / "hyperparams.yaml"
    if not yaml_file.is_file():
        raise FileNotFoundError(
            f"{yaml_file} not found: pass the output folder of {recipe} "
            "(e.g. results/wavlm-lora-arcface/1986)."
        )
    text = yaml_file.read_text(encoding="utf-8")
    match = re.search(r"^output_folder:\s*(\S+)\s*$", text, flags=re.M)
    if match is None or Path(match.group(1)).resolve() != run_folder.resolve():
        # Loading it from elsewhere would rebuild relative paths (and files) in the wrong place.
        raise FileNotFoundError(
            f"{yaml_file} names output_folder {match.group(1) if match else '?'}, which is not "
            f"{run_folder} seen from {Path.cwd()}: run the export from the directory the "
            "training ran in."
        )
    return run_folder, yaml_file, text


def is_joint_run(run_folder):
    """True for an output folder of recipes/joint/train.py (its YAML declares a masknet)."""
    yaml_file = Path(run_folder) / "hyperparams.yaml"
    return yaml_file.is_file() and bool(
        re.search(r"^masknet:", yaml_file.read_text(encoding="utf-8"), flags=re.M)
    )


def _check_run_folder(run_folder):
    run_folder, yaml_file, text = _check_output_folder(run_folder)
    label_file = run_folder / "save" / LABEL_ENCODER_FILE
    if not label_file.is_file():
        raise FileNotFoundError(f"{label_file} not found: train the speaker model first.")
    return run_folder, yaml_file, text, label_file


def load_run(run_folder, min_key="error_rate"):
    """A fresh encoder and classifier built from the run's ``hyperparams.yaml`` with the best
    checkpoint (lowest ``min_key``) loaded; returns ``(hparams, label_file, checkpoint)``."""
    from hyperpyyaml import load_hyperpyyaml
    from speechbrain.dataio.encoder import CategoricalEncoder
    from speechbrain.utils.checkpoints import Checkpointer

    from sepid.speaker.encoder import set_classifier_outputs

    run_folder, yaml_file, _, label_file = _check_run_folder(run_folder)
    with open(yaml_file, encoding="utf-8") as f:
        # no reseeding of the caller's random generators by the run's own seed line
        hparams = load_hyperpyyaml(f, {"__set_seed": None})
    labels = CategoricalEncoder()
    labels.load(label_file)
    set_classifier_outputs(hparams["classifier"], len(labels))
    checkpointer = Checkpointer(
        run_folder / "save",
        recoverables={"encoder": hparams["encoder"], "classifier": hparams["classifier"]},
    )
    checkpoint = checkpointer.recover_if_possible(min_key=min_key)
    if checkpoint is None:
        raise FileNotFoundError(f"No checkpoint in {run_folder / 'save'}: train the model first.")
    logger.info("Exporting checkpoint %s", checkpoint.path)
    hparams["encoder"].eval()
    hparams["classifier"].eval()
    return hparams, label_file, checkpoint


def read_metrics(run_folder):
    """``eval/metrics.json`` of the run (``recipes/speaker/evaluate.py``), or ``None``."""
    path = Path(run_folder) / "eval" / "metrics.json"
    if not path.is_file():
        logger.warning(
            "%s not found: the model card has no results and verify_* needs an explicit "
            "threshold. Run recipes/speaker/evaluate.py on this run first.",
            path,
        )
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def eer_threshold(metrics):
    """The fine-tuned model's cosine EER threshold on the evaluation trials, or ``None``."""
    if not metrics:
        return None
    cosine = metrics["models"].get("finetuned", {}).get("verification", {}).get("cosine", {})
    return cosine.get("eer_threshold")


def base_weights_file(source, cache_dir=None):
    """``<source>/<weights file>`` of the base WavLM, for the Pretrainer of unmerged adapters."""
    folder = Path(source)
    names = ("model.safetensors", "pytorch_model.bin")
    if folder.is_dir():
        for name in names:
            if (folder / name).is_file():
                return f"{folder.resolve()}/{name}"
        raise FileNotFoundError(f"No {' or '.join(names)} in the base model folder {folder}.")
    from huggingface_hub import try_to_load_from_cache

    for name in names:
        if isinstance(try_to_load_from_cache(source, name, cache_dir=cache_dir), str):
            return f"{source}/{name}"
    logger.warning("%s: weight file not in the local cache; assuming %s", source, names[0])
    return f"{source}/{names[0]}"


# ---------------------------------------------------------------------- writing ---
def _set_value(text, key, value, template=INTERFACE_DIR / "hyperparams.yaml"):
    """Replaces the value of the top-level ``key:`` line of the interface YAML template."""
    line = f"{key}: {json.dumps(value)}"
    new, n = re.subn(rf"^{key}:[^\n]*$", lambda _: line, text, count=1, flags=re.M)
    if n != 1:
        raise ValueError(f"{template} has no top-level `{key}:` line.")
    return new


def interface_hparams(values, folder=INTERFACE_DIR):
    """The interface YAML of ``folder`` with ``values`` (key -> JSON-able value) filled in."""
    template = folder / "hyperparams.yaml"
    text = template.read_text(encoding="utf-8")
    for key, value in values.items():
        text = _set_value(text, key, value, template)
    return text


def _wavlm_config(backbone):
    config = backbone.config.to_diff_dict()
    for key in ("transformers_version", "architectures", "torch_dtype", "dtype"):
        config.pop(key, None)
    return json.loads(json.dumps(config))  # tuples -> lists, only JSON types


def speaker_values(encoder, classifier, hparams, chunk_seconds):
    """The speaker branch's architecture values of the interface YAMLs."""
    return {
        "chunk_seconds": float(chunk_seconds),
        "embedding_dim": encoder.projection.out_features,
        "n_speakers": classifier.weight.shape[0],
        "pooling": encoder.pooling,
        "attention_channels": hparams.get("attention_channels", 128),
        "layer_weighting": encoder.layer_weights is not None,
        "normalize_waveform": bool(encoder.normalize_waveform),
        "wavlm_config": _wavlm_config(encoder.backbone),
    }


def _tensors(state):
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


def _training_overrides(yaml_text):
    """``--key=value`` for the top-level scalars of the run's resolved YAML that differ from the
    YAML it was generated from (overrides are not recorded otherwise)."""
    match = re.search(r"^# (\S+\.yaml)\s*$", yaml_text, flags=re.M)
    if match is None or not Path(match.group(1)).is_file():
        return None, []
    scalar = re.compile(r"^([A-Za-z_]\w*):[ \t]+([^!&*\s#][^#\n]*?)\s*(?:#.*)?$", flags=re.M)
    source = dict(scalar.findall(Path(match.group(1)).read_text(encoding="utf-8")))
    run = dict(scalar.findall(yaml_text))

    def value(text):
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            return text

    overrides = [
        f"--{k}={run[k]}" for k in source if k in run and value(run[k]) != value(source[k])
    ]
    return match.group(1), overrides


def _training_command(run_folder, script):
    """The command that trained ``run_folder``, rebuilt from its saved ``hyperparams.yaml``."""
    source_yaml, overrides = _training_overrides(
        (Path(run_folder) / "hyperparams.yaml").read_text(encoding="utf-8")
    )
    return " ".join(["python " + script, source_yaml or "<hparams.yaml>", *overrides])


def _train_summary(hparams, run_folder):
    """Utterances and hours of the training manifest, when it is there."""
    import csv

    path = Path(hparams.get("train_csv", ""))
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    hours = sum(float(r.get("duration", 0) or 0) for r in rows) / 3600
    return len(rows), hours


def _card_metrics(metrics):
    """``(model, set, scoring, metrics)`` rows of ``metrics.json``, fine-tuned model first."""
    rows = []
    for tag in ("finetuned", "pretrained"):
        for set_name, kinds in metrics["models"].get(tag, {}).items():
            for kind, values in kinds.items():
                rows.append((tag, set_name, kind, values))
    return rows


def model_card(
    hparams, run_folder, checkpoint, metrics, threshold, adapters, n_speakers, name, source
):
    """README.md: Hub metadata header (library, tags, datasets, licence, model-index) and text."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    data_folder = str(hparams.get("data_folder", ""))
    eval_folder = str(hparams.get("eval_data_folder") or data_folder)

    def dataset_id(folder):
        low = folder.lower()
        if "voxceleb" in low:
            return "voxceleb"
        if "librispeech" in low:
            return "librispeech"
        return Path(folder).name or "custom"

    eval_results = []
    if metrics:
        veri_file = hparams.get("verification_file")
        eval_name = Path(eval_folder).name + (f" {Path(veri_file).name}" if veri_file else "")
        ft = metrics["models"].get("finetuned", {})
        for kind, m in ft.get("verification", {}).items():
            for metric, label in (("eer", "EER"), ("min_dcf@0.01", "minDCF p=0.01")):
                if metric in m:
                    eval_results.append(
                        EvalResult(
                            task_type="speaker-verification",
                            task_name="Speaker verification",
                            dataset_type=dataset_id(eval_folder),
                            dataset_name=eval_name,
                            metric_type=metric.split("@")[0],
                            metric_name=f"{label} ({kind})",
                            metric_value=round(
                                float(m[metric]) * (100 if metric == "eer" else 1), 4
                            ),
                        )
                    )
        iden = ft.get("identification_eval_speakers", {}).get("embedding", {})
        if "top1" in iden:
            eval_results.append(
                EvalResult(
                    task_type="speaker-identification",
                    task_name="Speaker identification (cosine to enrolment centroids)",
                    dataset_type=dataset_id(eval_folder),
                    dataset_name=Path(eval_folder).name,
                    metric_type="accuracy",
                    metric_name="top-1 accuracy",
                    metric_value=round(float(iden["top1"]), 4),
                )
            )
    base = str(hparams.get("wavlm_source", ""))
    card_data = ModelCardData(
        library_name="speechbrain",
        license="apache-2.0",
        tags=[
            "speechbrain",
            "speaker-verification",
            "speaker-identification",
            "speaker-embedding",
            "wavlm",
            "lora",
            "arcface",
            "pytorch",
        ],
        datasets=sorted({dataset_id(data_folder), dataset_id(eval_folder)}),
        pipeline_tag="audio-classification",
        base_model=base if not Path(base).exists() and base.count("/") == 1 else None,
        model_name=name,
        eval_results=eval_results or None,
    )
    train_cmd = _training_command(run_folder, "recipes/speaker/train.py")
    summary = _train_summary(hparams, run_folder)
    backbone = hparams["encoder"].backbone.config
    counter = Path(checkpoint.path) / "counter.ckpt"
    epochs = counter.read_text().strip() if counter.is_file() else "?"
    lines = [
        f"# {name}: WavLM + LoRA + ArcFace speaker embeddings",
        "",
        "Speaker verification and identification with a "
        + ("frozen" if hparams.get("freeze_backbone", True) else "fine-tuned")
        + " WavLM "
        f"(`{base if not Path(base).exists() else 'local base model ' + Path(base).name}`, "
        f"{backbone.num_hidden_layers} layers x {backbone.hidden_size}) adapted with LoRA "
        f"(rank {hparams.get('lora_rank')} on {', '.join(hparams.get('lora_targets', []))}), "
        f"{hparams.get('pooling')} pooling and a {hparams.get('embedding_dim')}-dimensional "
        f"embedding trained with an ArcFace (additive angular margin) head on {n_speakers} "
        "speakers. Audio is mono 16 kHz; other rates and channel counts are converted on load.",
        "",
        "Weights: "
        + (
            "LoRA adapters and head only; the base WavLM weights are fetched from "
            f"`{hparams.get('wavlm_source')}` when the model loads."
            if adapters
            else "LoRA merged into the WavLM weights: the folder is self-contained and loads "
            "offline, with no base-model download."
        ),
        "",
        "## Usage",
        "",
        "```python",
        "from speechbrain.inference.interfaces import foreign_class",
        "",
        f'spk = foreign_class(source="{source}", pymodule_file="custom_interface.py",',
        '                    classname="WavLMSpeakerInterface")',
        'score, same = spk.verify_files("a.wav", "b.wav")  # cosine score, score > threshold',
        'emb = spk.encode_file("a.wav")                     # L2-normalised embedding',
        'top = spk.classify_file("a.wav", topk=5)           # [(training speaker, score), ...]',
        "```",
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
    if metrics:
        lines += [
            f"Measured by `{metrics.get('command', 'recipes/speaker/evaluate.py')}`:",
            "",
            "| model | set | scoring | EER % | minDCF 0.01 | top-1 |",
            "|---|---|---|---|---|---|",
        ]
        for tag, set_name, kind, m in _card_metrics(metrics):
            eer = f"{100 * m['eer']:.2f}" if "eer" in m else ""
            dcf = f"{m['min_dcf@0.01']:.4f}" if "min_dcf@0.01" in m else ""
            top1 = f"{m['top1']:.3f}" if "top1" in m else ""
            lines.append(f"| {tag} | {set_name} | {kind} | {eer} | {dcf} | {top1} |")
    else:
        lines.append("Not evaluated (no eval/metrics.json in the training run).")
    lines += [
        "",
        "## Training",
        "",
        f"- Data: `{data_folder}`"
        + (f", {summary[0]} training utterances ({summary[1]:.2f} h)" if summary else "")
        + f", {n_speakers} speakers.",
        f"- Command: `{train_cmd}` (the overrides are read back from the run's resolved "
        "hyperparams.yaml).",
        f"- Best checkpoint after epoch {epochs} (lowest validation error), lr {hparams.get('lr')}, batch "
        f"{hparams.get('batch_size')}, crops of {hparams.get('segment_seconds')} s, ArcFace margin "
        f"{hparams.get('margin')} scale {hparams.get('scale')}.",
        "",
        "## Limitations",
        "",
        "- `classify_file` only knows the training speakers; for other people compare embeddings "
        "(`encode_file`, `verify_files`).",
        "- The stored threshold is the EER point of the evaluation trials; other data (language, "
        "channel, duration) needs its own threshold.",
        "- Inputs longer than `chunk_seconds` are embedded in chunks and averaged.",
        "- Check the licences of the base model and the training data before redistributing.",
        "",
        "## References",
        "",
        "WavLM (Chen et al., IEEE JSTSP 2022); LoRA (Hu et al., ICLR 2022); ArcFace (Deng et al., "
        "CVPR 2019); SpeechBrain (Ravanelli et al., 2021).",
        "",
    ]
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines))


# Every name an export writes (speaker and joint); a folder holding anything else is not one.
EXPORT_FILES = frozenset(
    {
        "hyperparams.yaml",
        INTERFACE_FILE,
        "README.md",
        "embedder.ckpt",
        "classifier.ckpt",
        "label_encoder.ckpt",
        "encoder.ckpt",
        "masknet.ckpt",
        "decoder.ckpt",
    }
)
REPOSITORY = Path(__file__).resolve().parents[1]


def check_output_target(out, run_folder, overwrite):
    """Refuses an ``out`` that exporting would lose work in; returns ``out`` as a Path.

    An existing non-empty ``out`` needs ``overwrite``, and even then it is replaced only when it
    holds nothing but a previous export (the files :data:`EXPORT_FILES` names): never the run
    being exported, a folder inside it or holding it, the repository, the home folder or a folder
    this tool did not write. The error names what is there.
    """
    out = Path(out)
    target = out.resolve()
    run = Path(run_folder).resolve()
    protected = {
        "the training run being exported": run,
        "this repository": REPOSITORY,
        "the home folder": Path.home().resolve(),
    }
    for what, path in protected.items():
        if target == path or target in path.parents:
            where = f"is {what}" if target == path else f"holds {what} ({path})"
            raise FileExistsError(
                f"{out} {where}: the export never replaces it. Choose a new folder for --out."
            )
    if run in target.parents:
        raise FileExistsError(
            f"{out} lies inside the training run {run_folder}: write the export outside the run "
            f"(e.g. --out {Path(run_folder).parent / 'exported'})."
        )
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return out
    if not overwrite:
        raise FileExistsError(f"{out} exists and is not empty: pass --overwrite to replace it.")
    if not out.is_dir():
        raise FileExistsError(
            f"{out} is a file, not a previous export: --overwrite replaces only an exported "
            "folder. Choose a new folder for --out."
        )
    entries = sorted(out.iterdir())
    foreign = [e.name for e in entries if e.name not in EXPORT_FILES or not e.is_file()]
    if foreign or not (out / "hyperparams.yaml").is_file():
        shown = ", ".join(foreign[:10]) + (
            f" and {len(foreign) - 10} more" if len(foreign) > 10 else ""
        )
        raise FileExistsError(
            f"{out} is not a previous export (it holds {shown or 'no hyperparams.yaml'}): "
            "--overwrite replaces only a folder this tool wrote. Move those files away or "
            "choose a new folder for --out."
        )
    return out


def _replace_folder(tmp, out):
    """Moves the finished ``tmp`` to ``out`` (absent, empty, or to be replaced)."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)


def export_speaker(
    run_folder,
    out,
    adapters=False,
    overwrite=False,
    threshold=None,
    repo_id=None,
    min_key="error_rate",
    check_seconds=1.0,
):
    """Writes the Hub-ready folder of a speaker training run; returns its path.

    Arguments
    ---------
    run_folder : str or Path
        Output folder of ``recipes/speaker/train.py``.
    out : str or Path
        Folder to create; an existing non-empty one needs ``overwrite=True``.
    adapters : bool
        Ship the LoRA adapters and the base model id instead of merged WavLM weights.
    threshold : float, optional
        Verification threshold; default the run's EER threshold from ``eval/metrics.json``.
    repo_id : str, optional
        Hub repo the folder is meant for (used in the card's usage snippet).
    min_key : str
        Checkpoint metric to minimise.
    check_seconds : float
        Length of the random signal the exported model is checked on against the checkpoint.
    """
    from sepid.speaker.lora import merge_lora

    out = check_output_target(out, run_folder, overwrite)
    _check_run_folder(run_folder)
    metrics = read_metrics(run_folder)
    if threshold is None:
        threshold = eer_threshold(metrics)
    hparams, label_file, checkpoint = load_run(run_folder, min_key=min_key)
    encoder, classifier = hparams["encoder"], hparams["classifier"]
    n_speakers = classifier.weight.shape[0]
    sample_rate = hparams["sample_rate"]
    probe = torch.randn(
        1, int(check_seconds * sample_rate), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        reference = torch.nn.functional.normalize(encoder(probe), dim=-1)

    values = {
        **speaker_values(encoder, classifier, hparams, hparams.get("eval_chunk_seconds", 8.0)),
        "sample_rate": sample_rate,
        "threshold": threshold,
        "lora": None,
        "base_weights": None,
    }
    if adapters and not getattr(encoder, "freeze_backbone", True):
        raise ValueError(
            f"{run_folder} fine-tuned its WavLM backbone (freeze_backbone: False): --adapters "
            "would ship the base model's weights instead of the trained ones. Export merged "
            "(the default)."
        )
    if adapters:
        values["lora"] = {
            "rank": int(hparams["lora_rank"]),
            "alpha": float(hparams["lora_alpha"]),
            "targets": list(hparams["lora_targets"]),
        }
        values["base_weights"] = base_weights_file(
            encoder.source, cache_dir=Path(hparams["save_folder"]) / "hf_cache"
        )
        if Path(encoder.source).exists():
            logger.warning(
                "The base model %s is a local folder: the exported adapters load only where "
                "that folder exists. Export merged (the default) to publish.",
                encoder.source,
            )
        embedder_state = encoder.trainable_state_dict()
    else:
        # `encoder` was built for this export alone, so merging in place touches nothing else.
        merge_lora(encoder.backbone)
        embedder_state = encoder.state_dict()

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    done = False
    try:
        torch.save(_tensors(embedder_state), tmp / "embedder.ckpt")
        torch.save(_tensors(classifier.state_dict()), tmp / "classifier.ckpt")
        shutil.copyfile(label_file, tmp / "label_encoder.ckpt")
        (tmp / "hyperparams.yaml").write_text(interface_hparams(values), encoding="utf-8")
        shutil.copyfile(INTERFACE_DIR / INTERFACE_FILE, tmp / INTERFACE_FILE)
        card = model_card(
            hparams,
            run_folder,
            checkpoint,
            metrics,
            threshold,
            adapters,
            n_speakers,
            out.name,
            repo_id or str(out),
        )
        card.save(tmp / "README.md")
        # The folder must load and give the checkpoint's embeddings before it is published.
        model = getattr(interface_module(), INTERFACE_CLASS).from_hparams(source=str(tmp))
        diff = float((model.encode_batch(probe) - reference).abs().max())
        if diff > SELF_CHECK_ATOL:
            raise RuntimeError(
                f"The exported model's embeddings differ from checkpoint {checkpoint.path} by "
                f"{diff:.2e} (> {SELF_CHECK_ATOL:g}); nothing was written to {out}."
            )
        logger.info("Exported model reproduces the checkpoint (max |diff| %.2e)", diff)
        tmp.chmod(0o755)
        _replace_folder(tmp, out)
        done = True
    finally:
        if not done:
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info(
        "Exported %s (%s) to %s", checkpoint.path, "adapters" if adapters else "merged", out
    )
    return out


# ------------------------------------------------------------------ joint model ---
JOINT_DIR = Path(__file__).resolve().parent / "sepformer_speaker"
JOINT_CLASS = "SepformerSpeakerInterface"
SPEAKER_BLOCK = re.compile(r"^# >>> speaker interface.*?^# <<< speaker interface\n", re.M | re.S)
CHUNK_BLOCK = re.compile(r"^# >>> chunked separation.*?^# <<< chunked separation\n", re.M | re.S)
CHUNK_SOURCE = Path(__file__).resolve().parents[1] / "sepid" / "separation" / "separator.py"
SEPARATOR_FILES = {
    "encoder": "separator_encoder",
    "masknet": "masknet",
    "decoder": "separator_decoder",
}
# |exported - checkpoint| allowed on the self-check's separated signals (same float32 modules)
SEPARATION_ATOL = 1e-5


def joint_interface_source():
    """The joint ``custom_interface.py`` as exported: the speaker interface's code and the
    chunked separation (the ``# >>> chunked separation`` block of ``sepid/separation/separator.py``, torch
    only) inlined where the repository's file imports them, so the folder needs no other file of
    this project."""
    text = (JOINT_DIR / INTERFACE_FILE).read_text(encoding="utf-8")
    speaker = (INTERFACE_DIR / INTERFACE_FILE).read_text(encoding="utf-8")
    text, n = SPEAKER_BLOCK.subn(lambda _: speaker + "\n", text)
    if n != 1:
        raise ValueError(f"{JOINT_DIR / INTERFACE_FILE} has no `# >>> speaker interface` block.")
    chunking = CHUNK_BLOCK.search(CHUNK_SOURCE.read_text(encoding="utf-8"))
    if chunking is None:
        raise ValueError(f"{CHUNK_SOURCE} has no `# >>> chunked separation` block.")
    text, n = CHUNK_BLOCK.subn(lambda _: chunking.group(0), text)
    if n != 1:
        raise ValueError(f"{JOINT_DIR / INTERFACE_FILE} has no `# >>> chunked separation` block.")
    return text


def _import_file(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # from_hparams names its YAML's classes after this module
    spec.loader.exec_module(module)
    return module


def load_joint_run(run_folder, max_key="si_snri", collect_in=None):
    """The joint run's modules from its ``hyperparams.yaml``, initialised as training initialised
    them (the ``Pretrainer``: separator and speaker_source, collected in ``collect_in``) with the
    best checkpoint (highest ``max_key``) loaded; returns ``(hparams, checkpoint)``."""
    from hyperpyyaml import load_hyperpyyaml
    from speechbrain.utils.checkpoints import Checkpointer

    from sepid.speaker.source import prepare_speaker_branch

    run_folder, yaml_file, _ = _check_output_folder(run_folder, "recipes/joint/train.py")
    with open(yaml_file, encoding="utf-8") as f:
        hparams = load_hyperpyyaml(f, {"__set_seed": None})
    pretrainer = hparams["pretrainer"]
    if collect_in is not None:
        pretrainer.set_collect_in(collect_in)  # not in the run's own folder
    pretrainer.collect_files()
    pretrainer.load_collected()
    prepare_speaker_branch(
        label_encoder=hparams["label_encoder"],
        classifier=hparams["classifier"],
        speaker_source=hparams["speaker_source"],
        speaker_manifest=hparams["speaker_manifest"],
        train_speakers=hparams["train_speakers"],
    )
    names = (*SEPARATOR_FILES.values(), "speaker_encoder", "classifier")
    checkpointer = Checkpointer(
        run_folder / "save", recoverables={name: hparams[name] for name in names}
    )
    checkpoint = checkpointer.recover_if_possible(max_key=max_key)
    if checkpoint is None:
        raise FileNotFoundError(f"No checkpoint in {run_folder / 'save'}: train the model first.")
    logger.info("Exporting checkpoint %s", checkpoint.path)
    for name in names:
        hparams[name].eval()
    return hparams, checkpoint


def joint_model_card(hparams, run_folder, checkpoint, metrics, name, source):
    """README.md of a joint model: Hub metadata and text."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    rate = hparams["sample_rate"]
    eval_results = []
    joint = (metrics or {}).get("systems", {}).get("joint model", {})
    si_sdri = joint.get("separation", {}).get("si_sdri", {}).get("mean")
    if si_sdri is not None:
        eval_results.append(
            EvalResult(
                task_type="audio-to-audio",
                task_name="Speech separation",
                dataset_type="custom",
                dataset_name=Path(str(hparams.get("mixture_folder"))).name,
                metric_type="si-sdri",
                metric_name=f"SI-SDRi (dB, {rate} Hz)",
                metric_value=round(float(si_sdri), 4),
            )
        )
    card_data = ModelCardData(
        library_name="speechbrain",
        license="apache-2.0",
        tags=["speechbrain", "audio-source-separation", "sepformer", "speaker-identification"],
        pipeline_tag="audio-to-audio",
        model_name=name,
        eval_results=eval_results or None,
    )
    train_cmd = _training_command(run_folder, "recipes/joint/train.py")
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
    lines = [
        f"# {name}: SepFormer + WavLM speaker branch, trained jointly",
        "",
        f"Separates {hparams['num_spks']}-speaker mixtures (SepFormer at {rate} Hz) and names the "
        f"speaker of each separated source (WavLM + LoRA + ArcFace at "
        f"{hparams['speaker_sample_rate']} Hz, {n_speakers} training speakers, or your own "
        "after `enrol`). The two were trained together: permutation-invariant SI-SNR plus the "
        "speaker loss on each separated output. LoRA is merged into the WavLM weights: the "
        "folder is self-contained and loads offline.",
        "",
        "## Usage",
        "",
        "```python",
        "from speechbrain.inference.interfaces import foreign_class",
        "",
        f'sep = foreign_class(source="{source}", pymodule_file="custom_interface.py",',
        f'                    classname="{JOINT_CLASS}")',
        'for s in sep.separate_file("mixture.wav", save_folder="out/"):',
        "    print(s.path, s.speaker, s.score)       # s.signal, s.embedding",
        'sep.enrol({"alice": ["alice1.wav"], "bob": ["bob1.wav"]})  # name outputs by your speakers',
        "```",
        "",
        "## Results",
        "",
        f"SI-SDRi {si_sdri:.2f} dB at {rate} Hz, measured by `{metrics.get('command')}`."
        if si_sdri is not None
        else "Not evaluated (no eval/metrics.json in the training run).",
        "",
        "## Training",
        "",
        f"- Command: `{train_cmd}`.",
        f"- Speaker branch initialised from `{hparams.get('speaker_source')}`; separator from "
        f"`{hparams.get('separator_source')}`; best checkpoint by validation SI-SNRi "
        f"({Path(checkpoint.path).name}).",
        "",
        "## Limitations",
        "",
        f"- {hparams['num_spks']} sources per mixture; other rates and channel counts are "
        "converted on load.",
        "- Without `enrol`, each source is named by the closest training speaker, whoever it is: "
        "read `score` before trusting a name. After `enrol`, an output whose best score is "
        "below `enrol_threshold` (hyperparams.yaml, or `enrol(..., threshold=...)`) is named "
        "`unknown`.",
        chunking,
        "- Check the licences of the base models and the training data before redistributing.",
        "",
        "## References",
        "",
        "SepFormer (Subakan et al., ICASSP 2021); WavLM (Chen et al., IEEE JSTSP 2022); LoRA (Hu "
        "et al., ICLR 2022); ArcFace (Deng et al., CVPR 2019); SpeechBrain (Ravanelli et al., 2021).",
        "",
    ]
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines))


def export_joint(
    run_folder, out, overwrite=False, repo_id=None, max_key="si_snri", check_seconds=1.0
):
    """Writes the Hub-ready folder of a joint training run (``recipes/joint/train.py``): the
    SepFormer, the speaker branch with its LoRA merged, the label encoder,
    ``SepformerSpeakerInterface``; returns its path. Loaded back and checked against the
    checkpoint (separated signals and embeddings) before it appears at ``out``."""
    from sepid.joint import separate_with_modules
    from sepid.speaker.lora import merge_lora

    out = check_output_target(out, run_folder, overwrite)
    _check_output_folder(run_folder, "recipes/joint/train.py")
    path = Path(run_folder) / "eval" / "metrics.json"
    metrics = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    collect = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.collect-"))
    done = False
    try:
        hparams, checkpoint = load_joint_run(run_folder, max_key=max_key, collect_in=collect)
        encoder, classifier = hparams["speaker_encoder"], hparams["classifier"]
        separator = [hparams[m] for m in SEPARATOR_FILES.values()]
        rate, speaker_rate = hparams["sample_rate"], hparams["speaker_sample_rate"]
        probe = 0.1 * torch.randn(
            1, int(check_seconds * rate), generator=torch.Generator().manual_seed(0)
        )
        with torch.no_grad():
            reference = separate_with_modules(*separator, probe, hparams["num_spks"])
            outputs = reference.transpose(1, 2).reshape(-1, reference.shape[1])
            outputs = hparams["resampler"](outputs)
            reference_emb = torch.nn.functional.normalize(encoder(outputs), dim=-1)
        values = {
            **speaker_values(encoder, classifier, hparams, hparams["speaker_chunk_seconds"]),
            "sample_rate": speaker_rate,
            "threshold": None,
            "separator_sample_rate": rate,
            "num_spks": hparams["num_spks"],
            **{
                k: hparams[k]
                for k in (
                    "N_encoder_out",
                    "kernel_size",
                    "kernel_stride",
                    "transformer_layers",
                    "transformer_heads",
                    "transformer_ffn",
                    "dual_path_layers",
                    "chunk_size",
                )
            },
            # long mixtures are separated as the run's evaluation separated them
            **{
                k: hparams[k]
                for k in ("separation_chunk_seconds", "separation_overlap_seconds")
                if k in hparams
            },
        }
        merge_lora(encoder.backbone)  # built for this export alone
        torch.save(_tensors(encoder.state_dict()), tmp / "embedder.ckpt")
        torch.save(_tensors(classifier.state_dict()), tmp / "classifier.ckpt")
        hparams["label_encoder"].save(tmp / "label_encoder.ckpt")
        for file, name in SEPARATOR_FILES.items():
            torch.save(_tensors(hparams[name].state_dict()), tmp / f"{file}.ckpt")
        (tmp / "hyperparams.yaml").write_text(
            interface_hparams(values, JOINT_DIR), encoding="utf-8"
        )
        (tmp / INTERFACE_FILE).write_text(joint_interface_source(), encoding="utf-8")
        card = joint_model_card(
            hparams, run_folder, checkpoint, metrics, out.name, repo_id or str(out)
        )
        card.save(tmp / "README.md")
        # The exported file itself (speaker code inlined) must load and reproduce the checkpoint.
        module = _import_file(tmp / INTERFACE_FILE, "sepid_export_joint_interface")
        model = getattr(module, JOINT_CLASS).from_hparams(source=str(tmp))
        got = model.separate_signals(probe)
        diff = float((got - reference).abs().max())
        emb = model.encode_batch(outputs)
        emb_diff = float((emb - reference_emb).abs().max())
        if diff > SEPARATION_ATOL or emb_diff > SELF_CHECK_ATOL:
            raise RuntimeError(
                f"The exported model differs from checkpoint {checkpoint.path} (separated signals "
                f"by {diff:.2e}, embeddings by {emb_diff:.2e}); nothing was written to {out}."
            )
        logger.info(
            "Exported model reproduces the checkpoint (max |diff| %.2e signals, %.2e embeddings)",
            diff,
            emb_diff,
        )
        tmp.chmod(0o755)
        _replace_folder(tmp, out)
        done = True
    finally:
        shutil.rmtree(collect, ignore_errors=True)
        if not done:
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("Exported %s (joint model, merged) to %s", checkpoint.path, out)
    return out


# ---------------------------------------------------------------------- publish ---
def _transport_error():
    """The base class of the HTTP client's network errors (huggingface_hub 2.x uses httpx2)."""
    try:
        import httpx2 as httpx
    except ImportError:
        import httpx
    return httpx.HTTPError


def push_folder(folder, repo_id, private=False, revision=None, token=None, endpoint=None):
    """Uploads an exported folder to the Hub repo ``repo_id`` (created if needed); returns the
    commit URL. The token comes from ``token``, ``HF_TOKEN`` or the saved login and is never
    logged; any failure raises :class:`PublishError` and leaves ``folder`` as it is."""
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError

    folder = Path(folder)
    if not (folder / "hyperparams.yaml").is_file():
        raise FileNotFoundError(f"{folder} is not an exported model folder (no hyperparams.yaml).")
    token = token or get_token()
    if not token:
        raise PublishError(
            f"No Hugging Face token: set HF_TOKEN or run `hf auth login`, then push again. "
            f"The exported model is in {folder}."
        )
    api = HfApi(endpoint=endpoint, token=token)
    where = f"{api.endpoint}/{repo_id}"
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(
            folder_path=folder,
            repo_id=repo_id,
            revision=revision,
            commit_message=f"Upload {folder.name} (pretrained_interfaces/export.py)",
        )
    except (_transport_error(), HfHubHTTPError, HFValidationError, OSError) as err:
        message = str(err).replace(token, "***")
        raise PublishError(
            f"Could not push {folder} to {where}: {type(err).__name__}: {message}. "
            f"Check the network, the token's write access and the repo id; the exported "
            f"model is intact in {folder}."
        ) from None
    url = getattr(info, "commit_url", None) or str(info)
    logger.info("Pushed %s to %s (%s)", folder, where, url)
    return url


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "run_folder", help="output folder of recipes/speaker/train.py or recipes/joint/train.py"
    )
    parser.add_argument("--out", required=True, help="folder to write (must be new or empty)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument(
        "--adapters",
        action="store_true",
        help="ship LoRA adapters + the base model id instead of merged WavLM weights",
    )
    parser.add_argument("--threshold", type=float, help="verification threshold (default: EER)")
    parser.add_argument("--min_key", default="error_rate", help="checkpoint metric to minimise")
    parser.add_argument("--push", metavar="USER/REPO", help="upload the folder to this Hub repo")
    parser.add_argument("--private", action="store_true", help="create the Hub repo private")
    parser.add_argument("--revision", help="Hub branch to push to (created if needed)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if is_joint_run(args.run_folder):
            if args.adapters or args.threshold is not None or args.min_key != "error_rate":
                raise ValueError(
                    "--adapters, --threshold and --min_key are for speaker models; a joint model "
                    "exports merged, from its best checkpoint by validation SI-SNRi."
                )
            out = export_joint(
                args.run_folder, args.out, overwrite=args.overwrite, repo_id=args.push
            )
        else:
            out = export_speaker(
                args.run_folder,
                args.out,
                adapters=args.adapters,
                overwrite=args.overwrite,
                threshold=args.threshold,
                repo_id=args.push,
                min_key=args.min_key,
            )
        print(out)
        if args.push:
            print(push_folder(out, args.push, private=args.private, revision=args.revision))
    except (FileNotFoundError, FileExistsError, PublishError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

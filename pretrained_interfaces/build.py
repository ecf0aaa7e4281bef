"""Exporting a run: reads it (``runs``), writes the interface folder (``folder``) and its card
(``cards``) under a temporary name, loads it back, checks it against the checkpoint, and only
then renames it to ``out``."""

import contextlib
import errno
import json
import logging
import shutil
import tempfile
from pathlib import Path

import torch

from pretrained_interfaces.cards import joint_model_card, model_card
from pretrained_interfaces.folder import (
    INTERFACE_CLASS,
    INTERFACE_FILE,
    JOINT_CLASS,
    JOINT_DIR,
    SEPARATION_ATOL,
    SEPARATOR_FILES,
    _import_file,
    _replace_folder,
    _tensors,
    check_output_target,
    interface_hparams,
    joint_interface_source,
    speaker_interface_source,
    speaker_values,
)
from pretrained_interfaces.runs import (
    _check_output_folder,
    _check_run_folder,
    base_weights_file,
    eer_threshold,
    load_joint_run,
    load_run,
    portable,
    read_metrics,
    speaker_source_threshold,
)

logger = logging.getLogger(__name__)

# |exported - checkpoint| allowed on the self-check embeddings (float32, merged weights)
SELF_CHECK_ATOL = 1e-4
# what torch.save says when the disk fills under it (it names neither the file nor the cause)
TORCH_WRITE_FAILURES = ("unexpected pos", "file write failed", "inline_container")


class ExportSpaceError(OSError):
    """The disk filled up while writing an export; the message names the folder."""


@contextlib.contextmanager
def disk_space_errors(out):
    """Turns a full disk while writing the export of ``out`` (``OSError`` ENOSPC/EDQUOT, or
    torch.save's ``RuntimeError``) into one :class:`ExportSpaceError` naming the folder, the
    space left and the fix. Nothing is written to ``out`` (the caller removes its temporary
    folder)."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        full = isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)
        if isinstance(err, RuntimeError) and any(m in str(err) for m in TORCH_WRITE_FAILURES):
            full = True
        if not full:
            raise
        free = shutil.disk_usage(out.parent).free
        raise ExportSpaceError(
            errno.ENOSPC,
            f"No space left on the device of {out.parent} while writing the export "
            f"({free / 2**20:.1f} MiB free): free some space or pass another --out, then export "
            f"again. Nothing was written to {out}.",
        ) from None


def usage_source(out):
    """The ``source=`` a card's usage snippet shows for a local folder: relative to the
    repository when inside it, else the folder's name (run from its parent folder)."""
    return portable(out, Path(out).name)


def export_speaker(
    run_folder,
    out,
    adapters=False,
    overwrite=False,
    threshold=None,
    repo_id=None,
    min_key="error_rate",
    check_seconds=1.0,
    title=None,
    license="apache-2.0",
    datasets=None,
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
    title, license, datasets : str, str, list of str, optional
        The model card's title (default: ``repo_id``, else a description), licence and Hub
        dataset ids (default: recognised from the data folders).
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
    check_overrides = {}
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
        base_weights = base_weights_file(
            encoder.source, cache_dir=Path(hparams["save_folder"]) / "hf_cache"
        )
        # nothing machine-specific in the export: a Hub id, a repository-relative path, or a
        # placeholder the user replaces with overrides={"base_weights": ...} when loading
        values["base_weights"] = portable(base_weights, f"<wavlm_source>/{Path(base_weights).name}")
        if values["base_weights"] != base_weights:
            check_overrides["base_weights"] = base_weights
        if Path(encoder.source).exists():
            logger.warning(
                "The base model %s is a local folder: the exported adapters name it as %s and "
                "load with overrides={'base_weights': <its weight file>}. Export merged (the "
                "default) to publish.",
                encoder.source,
                values["base_weights"],
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
        card = model_card(
            hparams=hparams,
            run_folder=run_folder,
            checkpoint=checkpoint,
            metrics=metrics,
            threshold=threshold,
            adapters=adapters,
            n_speakers=n_speakers,
            title=title or repo_id or "WavLM speaker embeddings (verification, identification)",
            source=repo_id or usage_source(out),
            license=license,
            datasets=datasets,
        )
        with disk_space_errors(out):
            torch.save(_tensors(embedder_state), tmp / "embedder.ckpt")
            torch.save(_tensors(classifier.state_dict()), tmp / "classifier.ckpt")
            shutil.copyfile(label_file, tmp / "label_encoder.ckpt")
            (tmp / "hyperparams.yaml").write_text(interface_hparams(values), encoding="utf-8")
            (tmp / INTERFACE_FILE).write_text(speaker_interface_source(), encoding="utf-8")
            card.save(tmp / "README.md")
        # The folder must load (with its own code, model block inlined) and give the
        # checkpoint's embeddings before it is published.
        module = _import_file(tmp / INTERFACE_FILE, "sepid_export_speaker_interface_check")
        model = getattr(module, INTERFACE_CLASS).from_hparams(
            source=str(tmp), overrides=check_overrides
        )
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


def export_joint(
    run_folder,
    out,
    overwrite=False,
    repo_id=None,
    max_key="si_snri",
    check_seconds=1.0,
    threshold=None,
    title=None,
    license="apache-2.0",
    datasets=None,
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
        origin = "given with --threshold"
        if threshold is None:
            threshold, origin = speaker_source_threshold(hparams["speaker_source"])
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
            "threshold": threshold,
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
        card = joint_model_card(
            hparams=hparams,
            run_folder=run_folder,
            checkpoint=checkpoint,
            metrics=metrics,
            title=title or repo_id or "SepFormer + WavLM speaker branch, trained jointly",
            source=repo_id or usage_source(out),
            threshold=threshold,
            threshold_origin=origin,
            license=license,
            datasets=datasets,
        )
        with disk_space_errors(out):
            torch.save(_tensors(encoder.state_dict()), tmp / "embedder.ckpt")
            torch.save(_tensors(classifier.state_dict()), tmp / "classifier.ckpt")
            hparams["label_encoder"].save(tmp / "label_encoder.ckpt")
            for file, name in SEPARATOR_FILES.items():
                torch.save(_tensors(hparams[name].state_dict()), tmp / f"{file}.ckpt")
            (tmp / "hyperparams.yaml").write_text(
                interface_hparams(values, JOINT_DIR), encoding="utf-8"
            )
            (tmp / INTERFACE_FILE).write_text(joint_interface_source(), encoding="utf-8")
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

"""The interface folder ``export.py`` writes: the templates it fills in
(``speaker/``, ``sepformer_speaker/``), the values it fills them with, the two
``custom_interface.py`` files with their inlined code, and the rules for where a folder may be
written."""

import importlib.util
import json
import os
import re
import shutil
import sys
from pathlib import Path

INTERFACE_DIR = Path(__file__).resolve().parent / "speaker"
INTERFACE_FILE = "custom_interface.py"
INTERFACE_CLASS = "WavLMSpeakerInterface"
# ------------------------------------------------------------------ joint model ---
JOINT_DIR = Path(__file__).resolve().parent / "sepformer_speaker"
JOINT_CLASS = "SepformerSpeakerInterface"


def marked_block(name):
    """The regex of the lines from ``# >>> name`` to ``# <<< name``, both included."""
    return re.compile(rf"^# >>> {name}.*?^# <<< {name}\n", re.M | re.S)


SPEAKER_BLOCK = marked_block("speaker interface")
CHUNK_SOURCE = Path(__file__).resolve().parents[1] / "sepid" / "separation" / "separator.py"
# its `# >>> speaker model` block: the model code of training and of the exported speaker interface
MODEL_SOURCE = Path(__file__).resolve().parents[1] / "sepid" / "speaker" / "encoder.py"
SEPARATOR_FILES = {
    "encoder": "separator_encoder",
    "masknet": "masknet",
    "decoder": "separator_decoder",
}
# |exported - checkpoint| allowed on the self-check's separated signals (same float32 modules)
SEPARATION_ATOL = 1e-5


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


def _inline(text, target, name, source):
    """``text`` (the file ``target``) with its ``# >>> name`` block replaced by that block of the
    file ``source``."""
    block = marked_block(name)
    found = block.search(source.read_text(encoding="utf-8"))
    if found is None:
        raise ValueError(f"{source} has no `# >>> {name}` block.")
    text, n = block.subn(lambda _: found.group(0), text)
    if n != 1:
        raise ValueError(f"{target} has no `# >>> {name}` block.")
    return text


def speaker_interface_source():
    """The speaker ``custom_interface.py`` as exported: the ``# >>> speaker model`` block of
    ``sepid/speaker/encoder.py`` (the masked WavLM, pooling head and chunked embedding training
    uses) inlined where the repository's file imports it, so the folder needs no other file of
    this project."""
    target = INTERFACE_DIR / INTERFACE_FILE
    return _inline(target.read_text(encoding="utf-8"), target, "speaker model", MODEL_SOURCE)


def joint_interface_source():
    """The joint ``custom_interface.py`` as exported: the speaker interface's code (as exported,
    :func:`speaker_interface_source`) and the chunked separation (the ``# >>> chunked
    separation`` block of ``sepid/separation/separator.py``, torch only) inlined where the
    repository's file imports them, so the folder needs no other file of this project."""
    target = JOINT_DIR / INTERFACE_FILE
    text = target.read_text(encoding="utf-8")
    speaker = speaker_interface_source()
    text, n = SPEAKER_BLOCK.subn(lambda _: speaker + "\n", text)
    if n != 1:
        raise ValueError(f"{target} has no `# >>> speaker interface` block.")
    return _inline(text, target, "chunked separation", CHUNK_SOURCE)


def _import_file(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # from_hparams names its YAML's classes after this module
    spec.loader.exec_module(module)
    return module


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

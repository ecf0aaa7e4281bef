"""Reading a training run folder for ``export.py``: its resolved ``hyperparams.yaml``, the
best checkpoint, ``eval/metrics.json`` and what the model card says about its training."""

import csv
import json
import logging
import re
import shlex
from pathlib import Path

import yaml

from pretrained_interfaces.folder import SEPARATOR_FILES
from sepid.data.schema import LABEL_ENCODER_FILE

logger = logging.getLogger(__name__)


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
    path = Path(hparams.get("train_csv", ""))
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    hours = sum(float(r.get("duration", 0) or 0) for r in rows) / 3600
    return len(rows), hours


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


# ------------------------------------------------- what an export may say about the run ---
REPOSITORY = Path(__file__).resolve().parents[1]
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# YAML tags whose value is derived or built, not given: never an override on their own
_DERIVED = ("!ref", "!name:", "!new:", "!apply:", "!copy", "!tuple", "!include")


def is_hub_id(source):
    """True for a Hub repo id (``user/name``) that is not a local path."""
    text = str(source)
    return bool(HUB_ID.match(text)) and not Path(text).exists()


def portable(value, placeholder, roots=()):
    """``value`` (a path or Hub id) as an export may print it: a Hub id as it is, a path under
    one of ``roots`` (``(path, "<name>")`` pairs, first match wins) with that prefix replaced,
    a path inside the repository relative to it, anything else ``placeholder``. Relative paths
    are taken from the current directory, where the run's paths resolve (see
    :func:`_check_output_folder`)."""
    if value is None:
        return None
    text = str(value)
    if is_hub_id(text):
        return text
    path = Path(text).absolute()
    for root, name in roots:
        if root is None:
            continue
        root = Path(root).absolute()
        if path == root:
            return name
        if root in path.parents:
            return f"{name}/{path.relative_to(root).as_posix()}"
    if path == REPOSITORY or REPOSITORY in path.parents:
        return path.relative_to(REPOSITORY).as_posix()
    return placeholder


def _tagged_loader():
    """A safe YAML loader that reads any tag as the plain value behind it (tags kept aside)."""

    class Loader(yaml.SafeLoader):
        pass

    def construct(loader, suffix, node):
        if isinstance(node, yaml.ScalarNode):
            return loader.construct_scalar(node)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node, deep=True)
        return loader.construct_mapping(node, deep=True)

    Loader.add_multi_constructor("!", construct)
    Loader.add_multi_constructor("tag:", construct)
    return Loader


def _top_level(text):
    """``{key: node}`` of a YAML document's top-level mapping (aliases are the same node)."""
    root = yaml.compose(text, Loader=_tagged_loader())
    return {k.value: v for k, v in root.value} if root is not None else {}


def _plain(node):
    """True for a node with no tag of its own or inside it (a value a user can pass)."""
    if node.tag.startswith("!"):
        return False
    if isinstance(node, yaml.SequenceNode):
        return all(_plain(n) for n in node.value)
    if isinstance(node, yaml.MappingNode):
        return all(_plain(k) and _plain(v) for k, v in node.value)
    return True


def _value(node):
    return _tagged_loader()("").construct_object(node, deep=True)


def _override_text(value):
    if isinstance(value, (list, dict)):
        return json.dumps(value)  # YAML flow syntax, strings double-quoted
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value)
    return str(value)


def training_overrides(run_folder):
    """``(source_yaml, {key: value})``: the YAML the run was generated from (relative to the
    repository when it lies in it) and the overrides that turn it into the run's resolved
    ``hyperparams.yaml``: every top-level key the source gives plainly or as ``!PLACEHOLDER``
    whose run value differs, and ``!ref <key>`` where the run's key is the same object as another
    top-level key (e.g. ``--prepare_data='!ref <prepare_folder>'``). Values are as the run
    holds them (paths not yet made portable)."""
    text = (Path(run_folder) / "hyperparams.yaml").read_text(encoding="utf-8")
    match = re.search(r"^# (\S+\.yaml)\s*$", text, flags=re.M)
    if match is None or not Path(match.group(1)).is_file():
        return None, {}
    source_file = Path(match.group(1))
    source = _top_level(source_file.read_text(encoding="utf-8"))
    run = _top_level(text)
    overrides = {}
    for key, snode in source.items():
        rnode = run.get(key)
        if rnode is None or key.startswith("__"):
            continue
        if snode.tag == "!PLACEHOLDER" or (_plain(snode) and _plain(rnode)):
            value = _value(rnode)
            if snode.tag == "!PLACEHOLDER" or value != _value(snode):
                overrides[key] = value
        elif snode.tag == "!ref" and not _plain(rnode):
            # the run's value is another top-level key's object: the override was `!ref <that>`
            same = [k for k, n in run.items() if n is rnode and k != key]
            target = re.fullmatch(r"<(\w+)>", str(snode.value).strip())
            if same and (target is None or target.group(1) not in same):
                overrides[key] = f"!ref <{same[0]}>"
    return portable(source_file, str(source_file)), overrides


# Folders a training command names that are the user's own: placeholders in what is published.
FOLDER_KEYS = ("output_folder", "data_folder", "eval_data_folder")


def training_command(run_folder, script, placeholders=None):
    """The command that trained ``run_folder``, as it runs from the repository root on another
    machine: the source YAML relative to the repository, every override shlex-quoted, the data
    and output folders (and any path outside the repository: ``placeholders`` or ``<key>``) as
    placeholders. Returns ``(command, notes)``: ``notes`` maps each placeholder to what it stood
    for (a repository-relative path or a description), for the card to explain."""
    source_yaml, overrides = training_overrides(run_folder)
    placeholders = dict(placeholders or {})
    notes = {}
    args = []
    for key in FOLDER_KEYS:
        value = overrides.pop(key, None)
        if key == "output_folder" or value is not None:
            name = f"<{key}>"
            shown = portable(value, None) if value is not None else None
            notes[name] = shown
            args.append(f"--{key}={name}")
    for key, value in overrides.items():
        if isinstance(value, str) and not value.startswith("!ref") and Path(value).exists():
            shown = placeholders.get(key) or portable(value, f"<{key}>")
            if shown.startswith("<"):
                notes.setdefault(shown, None)
            value = shown
        elif isinstance(value, str) and value.startswith(("/", "~")):
            value = placeholders.get(key, f"<{key}>")
            notes.setdefault(value, None)
        args.append(f"--{key}={_override_text(value)}")
    command = " ".join(
        shlex.quote(a) for a in ["python", script, source_yaml or "<hparams.yaml>", *args]
    )
    return command, notes


def manifest_size(path):
    """``(rows, speakers)`` of a manifest CSV (``spk_id`` column), or ``None``."""
    path = Path(path) if path else None
    if path is None or not path.is_file():
        return None
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return len(rows), len({r.get("spk_id") for r in rows})


def base_model_origin(source, kind):
    """``(shown, pretrained, text)`` for a base model source (``kind``: ``"wavlm"``,
    ``"sepformer"`` or ``"speaker export"``): ``shown`` is the Hub id or a placeholder,
    ``pretrained`` True for a Hub model, False for a tiny random model built by
    :mod:`sepid.tiny` (recognised by its config), None when a local folder says nothing."""
    from sepid.tiny import TINY_SEPFORMER, TINY_SEPFORMER_YAML, TINY_WAVLM

    if source is None:
        return None, None, "none"
    text = str(source)
    if is_hub_id(text):
        return text, True, f"`{text}` (pretrained, from the Hugging Face Hub)"
    folder = Path(text)
    shown = portable(text, f"<{kind.replace(' ', '_')}>")
    tiny = False
    if kind == "wavlm" and (folder / "config.json").is_file():
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        tiny = all(
            config.get(k) == (list(v) if isinstance(v, tuple) else v) for k, v in TINY_WAVLM.items()
        )
    elif kind == "sepformer" and (folder / "hyperparams.yaml").is_file():
        rate = re.search(r"^sample_rate: (\d+)", (folder / "hyperparams.yaml").read_text())
        tiny = rate is not None and (folder / "hyperparams.yaml").read_text() == (
            TINY_SEPFORMER_YAML.format(sample_rate=int(rate.group(1)), **TINY_SEPFORMER)
        )
    elif kind == "speaker export" and (folder / "hyperparams.yaml").is_file():
        match = re.search(r"^wavlm_config: (.*)$", (folder / "hyperparams.yaml").read_text(), re.M)
        config = json.loads(match.group(1)) if match else {}
        tiny = (
            bool(config)
            and all(
                config.get(k) == (list(v) if isinstance(v, tuple) else v)
                for k, v in TINY_WAVLM.items()
                if k in config
            )
            and config.get("hidden_size") == TINY_WAVLM["hidden_size"]
        )
    if tiny:
        what = {
            "wavlm": "WavLM",
            "sepformer": "SepFormer",
            "speaker export": "speaker model built on a tiny random WavLM",
        }[kind]
        return (
            shown,
            False,
            (
                f"a tiny randomly initialised {what} (`sepid.tiny`, built for the tests and the "
                "offline demo): no pretrained weights, so this model only demonstrates the pipeline"
            ),
        )
    return shown, None, f"a local folder ({shown}; not a Hub id, its origin is not recorded)"


def speaker_source_threshold(source):
    """``(threshold, origin)``: the verification threshold stored in the speaker source's
    exported ``hyperparams.yaml`` (a local folder, or a Hub id fetched with the saved token),
    or ``(None, why)``."""
    if source is None:
        return None, "no speaker source"
    folder = Path(str(source))
    shown = portable(source, "<speaker_source>")
    if folder.is_dir():
        yaml_file = folder / "hyperparams.yaml"
    elif is_hub_id(source):
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError

        try:
            yaml_file = Path(hf_hub_download(str(source), "hyperparams.yaml"))
        except (HfHubHTTPError, OSError) as err:
            logger.warning("Could not read the threshold of %s: %s", source, err)
            return None, f"{shown}'s hyperparams.yaml could not be read"
    else:
        return None, f"{shown} is not there"
    if not yaml_file.is_file():
        return None, f"{shown} has no hyperparams.yaml"
    match = re.search(r"^threshold:\s*(\S+)", yaml_file.read_text(encoding="utf-8"), re.M)
    value = yaml.safe_load(match.group(1)) if match else None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None, f"{shown} stores no threshold (it was exported without an evaluation)"
    return float(value), (
        f"the cosine EER threshold of the speaker source `{shown}`, measured before joint "
        "training: re-measure it on your trials for the jointly trained branch"
    )

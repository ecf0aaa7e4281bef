"""Command-line overrides kept in a file: a recipe run as ``script.py hparams/x.yaml --k=v ...``
with the ``--k=v`` read from a YAML mapping (e.g. ``hparams/demo/speaker-overrides.yaml``), so a
variant of an experiment (the offline demo) is the real YAML plus a short list of differences
instead of a copy of it.

::

    mapfile -t OVERRIDES < <(python -m sepid.training.overrides hparams/demo/speaker-overrides.yaml \\
        --seed=2)
    python recipes/speaker/train.py hparams/wavlm-lora-arcface.yaml "${OVERRIDES[@]}"

Values are written as they are in the file (tags such as ``!ref <prepare_folder>`` included), one
``--key=value`` per line; ``--key=value`` arguments after the file replace or add keys.
"""

import io
import sys

from ruamel.yaml import YAML


def _yaml():
    yaml = YAML(typ="rt")
    yaml.width = 1 << 30  # one line per value
    yaml.default_flow_style = True
    return yaml


def read_overrides(path):
    """The mapping in ``path``, values kept as YAML text (tags included): ``{key: text}``."""
    yaml = _yaml()
    with open(path, encoding="utf-8") as fin:
        data = yaml.load(fin) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of overrides (key: value)")
    texts = {}
    for key, value in data.items():
        stream = io.StringIO()
        yaml.dump({key: value}, stream)
        text = stream.getvalue().strip()
        # flow style: "{key: value}"
        texts[key] = text[1:-1].split(":", 1)[1].strip()
    return texts


def override_args(path, extra=()):
    """``["--key=value", ...]`` of the overrides file ``path``, then of ``extra`` (``--key=value``
    strings, which replace the file's value of the same key)."""
    merged = read_overrides(path)
    for arg in extra:
        if not arg.startswith("--") or "=" not in arg:
            raise ValueError(f"Expected --key=value, got {arg!r}")
        key, value = arg[2:].split("=", 1)
        merged[key] = value
    for key, value in merged.items():
        if "=" in value:
            raise ValueError(
                f"{key}: {value!r} holds '=', which SpeechBrain's command line cannot take."
            )
    return [f"--{key}={value}" for key, value in merged.items()]


def main(argv=None):
    """Prints the overrides of a file (and of any ``--key=value`` after it), one per line."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    for arg in override_args(argv[0], argv[1:]):
        print(arg)


if __name__ == "__main__":
    main()

"""What the demo benchmarks (``bench_demo_speaker.py``, ``bench_demo_joint.py``) record, and
the rule that a setting is run on the test speakers only after it was run on the dev speakers.

A run's *setting* is everything that decides what is trained and how, except the seed and the
split's data: the demo overrides file's values merged with the ``--key=value`` overrides given
to the benchmark (minus the keys that only say where things are: :data:`LOCATION_KEYS`), the
tiny model's config values, and the benchmark's own options that change the model (e.g.
``--n_train_speakers``). Its ``setting_id`` is the first 12 hex digits of the SHA-256 of its
canonical JSON. Every record carries ``split``, ``setting`` and ``setting_id``.

``--split test`` is refused unless the results file as committed (``git show HEAD:<file>``) holds
a ``dev`` record of the same ``setting_id``; ``--no_dev_record`` runs it anyway and the record
says so (``"dev_records": []``, ``"selected_on_dev": false``). A test record lists the seeds of
the dev records it relied on.
"""

import hashlib
import json
import subprocess
from pathlib import Path

from sepid.training.overrides import read_overrides

ROOT = Path(__file__).resolve().parents[2]
# Where things are, not what they are: not part of a setting.
LOCATION_KEYS = {
    "output_folder",
    "seed",
    "data_folder",
    "eval_data_folder",
    "wavlm_source",
    "separator_source",
    "speaker_source",
    "speaker_manifest",
    "valid_speaker_manifest",
    "mixture_folder",
    "enrol_csv",
    "enrol_data_folder",
    "train_speakers",
    "speakers",
}


def setting_of(overrides_file, overrides, tiny_config, **options):
    """``(setting, setting_id)`` of a run (module docstring). ``overrides`` are the benchmark's
    ``--key=value`` arguments; ``speaker_source=null`` (a fresh speaker branch) is kept, as it
    changes the chain, any other location is not."""
    values = read_overrides(ROOT / overrides_file)
    for arg in overrides:
        key, value = arg[2:].split("=", 1)
        values[key] = value
    kept = {
        k: v
        for k, v in values.items()
        if k not in LOCATION_KEYS or (k == "speaker_source" and v in ("null", "None"))
    }
    setting = {
        "overrides_file": str(overrides_file),
        "values": dict(sorted(kept.items())),
        "tiny_config": dict(sorted(read_overrides(ROOT / tiny_config).items())),
        **{k: v for k, v in sorted(options.items())},
    }
    digest = hashlib.sha256(json.dumps(setting, sort_keys=True).encode()).hexdigest()
    return setting, digest[:12]


def committed_records(results_file):
    """The records of ``results_file`` (repository-relative) as committed at ``HEAD``."""
    proc = subprocess.run(
        ["git", "show", f"HEAD:{results_file}"], cwd=ROOT, capture_output=True, text=True
    )
    if proc.returncode != 0:
        if "exists on disk, but not in" in proc.stderr or "does not exist" in proc.stderr:
            return []
        raise RuntimeError(
            f"Cannot read the committed {results_file} (git show HEAD:{results_file}): "
            f"{proc.stderr.strip()}. Run the benchmark inside the repository's git checkout."
        )
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def dev_seeds(records, setting_id):
    """Seeds of the dev records of ``setting_id`` among ``records``."""
    return sorted(
        r["seed"] for r in records if r.get("split") == "dev" and r.get("setting_id") == setting_id
    )


def gate_test_split(records, setting_id, results_file, no_dev_record=False, command=""):
    """What a test-split record says of its selection: ``{"dev_records": [seeds],
    "selected_on_dev": bool}``; raises ``SystemExit`` when the setting has no dev record in
    ``records`` (the committed ``results_file``) and ``no_dev_record`` is False."""
    seeds = dev_seeds(records, setting_id)
    if not seeds and not no_dev_record:
        raise SystemExit(
            f"--split test refused: setting {setting_id} has no dev record in the committed "
            f"{results_file}. Run it on the dev speakers first ({command or 'the same command'} "
            "with --split dev), commit the records it appends to that file, then run the test "
            "split; or pass --no_dev_record to run it anyway, recorded as not selected on dev."
        )
    return {"dev_records": seeds, "selected_on_dev": bool(seeds)}


def append_record(result, *files):
    """Appends the JSON line of ``result`` to each file (made when missing)."""
    line = json.dumps(result) + "\n"
    for path in files:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fout:
            fout.write(line)

"""The demo's summary: the headline numbers of its three evaluations on the unseen test-other
speakers, each read from the ``metrics.json`` the evaluation wrote (named under each table), into
``<output folder>/summary.md`` and ``summary.json``."""

import json
from pathlib import Path

from sepid.data.manifest import write_atomic

SPEAKER_MODELS = {
    "pretrained": "untrained tiny WavLM",
    "finetuned": "trained on 251 speakers",
    "fbank": "fbank mean+std baseline (no training)",
}
SEPARATION_KEYS = (("SI-SDRi", "si_sdri"), ("SDRi", "sdri"), ("PESQ", "pesq"), ("STOI", "stoi"))


def _read(path):
    with open(path, encoding="utf-8") as fin:
        return json.load(fin)


def _pct(value):
    return None if value is None else round(100 * value, 2)


def speaker_rows(metrics):
    """``{model name: {eer, min_dcf, tar_at_far_1pct, top1}}`` (percent except minDCF)."""
    rows = {}
    for tag, sets in metrics["models"].items():
        cosine = sets["verification"]["cosine"]
        iden = sets.get("identification_eval_speakers", {}).get("embedding", {})
        rows[SPEAKER_MODELS.get(tag, tag)] = {
            "eer": _pct(cosine["eer"]),
            "min_dcf": round(cosine["min_dcf@0.01"], 3),
            "tar_at_far_1pct": _pct(cosine["tar@far=0.01"]),
            "top1": _pct(iden.get("top1")),
            "n_trials": cosine.get("n_target", 0) + cosine.get("n_nontarget", 0),
        }
    return rows


def _separation_row(summary):
    return {
        key: None if summary.get(key) is None else summary[key]["mean"]
        for _, key in SEPARATION_KEYS
    }


def _identification(report):
    """``{speaker model: {separated, clean, mixture}}`` embedding accuracies (%)."""
    rows = {}
    for model, conditions in report.get("speaker_identification", {}).items():
        rows[model] = {
            condition: _pct(conditions[condition]["embedding"]["accuracy"])
            for condition in ("separated", "clean", "mixture")
            if "embedding" in conditions.get(condition, {})
        }
    return rows


def separation_rows(separation, joint):
    """Rows of the separation table: the unprocessed mixture, the untrained separator (from the
    separation evaluation and from the joint evaluation: the same model and mixtures) and the
    jointly trained one; then the identification rows."""
    systems = joint["systems"]
    untrained = next(name for name in systems if name != "joint model")
    rows = {
        "mixture (unprocessed)": _separation_row(systems[untrained]["mixture"]),
        "untrained tiny separator": _separation_row(systems[untrained]["separation"]),
        "jointly trained separator": _separation_row(systems["joint model"]["separation"]),
    }
    identification = {}
    for model, acc in _identification(systems[untrained]).items():
        identification[f"untrained separator + {model} speaker model"] = acc
    for model, acc in _identification(systems["joint model"]).items():
        identification[f"jointly trained separator + {model} branch"] = acc
    check = _separation_row(separation["separation"])
    return rows, identification, check


def _cell(value, digits=2):
    return "n/a" if value is None else f"{value:.{digits}f}"


def write_summary(out, seed, timings, seconds):
    """Writes ``summary.md`` and ``summary.json`` in ``out`` and returns the markdown;
    ``timings``: seconds of each stage when it last ran, ``seconds``: of this run."""
    out = Path(out)
    files = {
        "speaker": out / "speaker" / str(seed) / "eval" / "metrics.json",
        "separation": out / "separation" / str(seed) / "eval" / "metrics.json",
        "joint": out / "joint" / str(seed) / "eval" / "metrics.json",
        "use": out / "use" / "use.json",
    }
    speaker = speaker_rows(_read(files["speaker"]))
    separation, identification, check = separation_rows(
        _read(files["separation"]), _read(files["joint"])
    )
    use = _read(files["use"])
    lines = [
        "# Offline demo: results on the 10 unseen test-other speakers",
        "",
        "Speaker verification and identification (balanced trials among the unseen speakers; "
        "identification: cosine to each speaker's enrolment centroid)",
        "",
        "| speaker model | EER (%) | minDCF p=0.01 | TAR @ FAR 1% (%) | top-1 (%) |",
        "|---|---|---|---|---|",
    ]
    for name, r in speaker.items():
        lines.append(
            f"| {name} | {_cell(r['eer'])} | {_cell(r['min_dcf'], 3)} | "
            f"{_cell(r['tar_at_far_1pct'], 1)} | {_cell(r['top1'], 1)} |"
        )
    lines += [
        "",
        f"From `{files['speaker']}`.",
        "",
        "Separation of two-speaker mixtures of the unseen speakers (8 kHz, mean over mixtures; "
        "dB except PESQ, STOI)",
        "",
        f"| system | {' | '.join(n for n, _ in SEPARATION_KEYS)} |",
        "|---" * (len(SEPARATION_KEYS) + 1) + "|",
    ]
    for name, r in separation.items():
        lines.append(f"| {name} | {' | '.join(_cell(r[k]) for _, k in SEPARATION_KEYS)} |")
    lines += [
        "",
        f"From `{files['joint']}` (the separation evaluation, `{files['separation']}`, "
        f"measured the untrained separator at SI-SDRi {_cell(check['si_sdri'])} dB on the "
        "same mixtures).",
        "",
        "Speaker identification of each separated output (%, enrolled unseen speakers; outputs "
        "labelled through the SI-SDR permutation)",
        "",
        "| system | separated outputs | clean sources (upper bound) | mixture (lower bound) |",
        "|---|---|---|---|",
    ]
    for name, r in identification.items():
        cells = [_cell(r.get(c), 1) for c in ("separated", "clean", "mixture")]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    lines += [
        "",
        f"From `{files['joint']}`.",
        "",
        "Exported models, loaded with foreign_class:",
        "",
    ]
    for pair, v in use["verification"].items():
        lines.append(f"- verify ({pair}): score {v['score']:.3f}, same speaker: {v['same']}")
    named = ", ".join(s["speaker"] for s in use["separated_enrolled"])
    lines.append(
        f"- separate `{use['mixture']}`: outputs named {named} after enrolment "
        f"(true: {', '.join(use['true_speakers'])})"
    )
    lines += [
        "",
        f"From `{files['use']}`. Stage times (s, when each last ran): "
        + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())
        + f"; sum {sum(timings.values()):.0f} s (this run: {seconds:.0f} s).",
    ]
    markdown = "\n".join(lines) + "\n"
    result = {
        "seed": seed,
        "speaker": speaker,
        "separation": separation,
        "separation_eval_untrained": check,
        "identification": identification,
        "use": use,
        "stage_seconds": timings,
        "total_seconds": seconds,
        "files": {k: str(v) for k, v in files.items()},
    }
    for name, text in (("summary.md", markdown), ("summary.json", json.dumps(result, indent=2))):
        write_atomic(out / name, text)
    return markdown

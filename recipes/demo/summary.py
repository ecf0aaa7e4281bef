"""The demo's summary: the headline numbers of its three evaluations on the unseen test-other
speakers, each read from the ``metrics.json`` the evaluation wrote (named under each table), into
``<output folder>/summary.md`` and ``summary.json``."""

import json
from pathlib import Path

from sepid.data.manifest import write_atomic
from sepid.report.comparisons import compare_per_mixture
from sepid.report.intervals import verdict
from sepid.report.tables import interval_note

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


def _range(interval, scale=1.0, digits=2):
    """``[low, high]`` of an interval record, scaled and rounded (None without one)."""
    if interval is None:
        return None
    return [round(scale * interval["low"], digits), round(scale * interval["high"], digits)]


def speaker_rows(metrics):
    """``{model name: {eer, eer_ci, min_dcf, min_dcf_ci, tar_at_far_1pct, top1}}`` (percent
    except minDCF; ``*_ci`` the speaker-bootstrap interval, None when the evaluation ran
    without one)."""
    rows = {}
    for tag, sets in metrics["models"].items():
        cosine = sets["verification"]["cosine"]
        intervals = cosine.get("intervals", {})
        iden = sets.get("identification_eval_speakers", {}).get("embedding", {})
        rows[SPEAKER_MODELS.get(tag, tag)] = {
            "eer": _pct(cosine["eer"]),
            "eer_ci": _range(intervals.get("eer"), 100.0),
            "min_dcf": round(cosine["min_dcf@0.01"], 3),
            "min_dcf_ci": _range(intervals.get("min_dcf@0.01"), 1.0, 3),
            "tar_at_far_1pct": _pct(cosine["tar@far=0.01"]),
            "top1": _pct(iden.get("top1")),
            "n_trials": cosine.get("n_target", 0) + cosine.get("n_nontarget", 0),
        }
    return rows


def _difference(comparisons, a, b, key):
    """``{"difference", "interval"}`` of ``a - b`` in the speaker evaluation's paired
    comparisons (stored once per pair of models, in either order: negated when needed)."""
    if f"{a} - {b}" in comparisons:
        return comparisons[f"{a} - {b}"]["cosine"][key]
    found = comparisons[f"{b} - {a}"]["cosine"][key]
    interval = found["interval"]
    if interval is not None:
        interval = {**interval, "low": -interval["high"], "high": -interval["low"]}
    return {"difference": -found["difference"], "interval": interval}


def speaker_comparisons(metrics):
    """The trained model against the untrained one and against the fbank baseline, where
    the evaluation scored them: ``{"<system> vs <other>": {metric: {difference, interval,
    verdict}}}`` (EER in points of percent, minDCF as is; verdict: what the paired interval
    supports, :func:`sepid.report.intervals.verdict`)."""
    comparisons = metrics.get("comparisons", {}).get("verification", {})
    models = metrics["models"]
    out = {}
    for other in ("fbank", "pretrained"):
        if "finetuned" not in models or other not in models or not comparisons:
            continue
        name = f"{SPEAKER_MODELS['finetuned']} vs {SPEAKER_MODELS[other]}"
        out[name] = {}
        for key, scale, label in (("eer", 100.0, "EER"), ("min_dcf@0.01", 1.0, "minDCF")):
            found = _difference(comparisons, "finetuned", other, key)
            out[name][label] = {
                "difference": round(scale * found["difference"], 3),
                "interval": _range(found["interval"], scale, 3),
                "verdict": verdict(found["interval"], lower_is_better=True),
            }
    return out


def _separation_row(summary):
    row = {}
    for _, key in SEPARATION_KEYS:
        stats = summary.get(key)
        row[key] = None if stats is None else stats["mean"]
        row[f"{key}_ci"] = None if stats is None else _range(stats.get("interval"))
    return row


def separation_comparison(joint_eval, joint):
    """The jointly trained separator against the untrained one on the same mixtures: the paired
    bootstrap over mixtures of the SI-SDRi difference, from the two per-mixture CSVs the joint
    evaluation wrote, with the resampling settings of its own intervals."""
    systems = joint["systems"]
    untrained = next(name for name in systems if name != "joint model")
    record = systems["joint model"]["separation"]["si_sdri"].get("interval")
    if record is None:
        return None
    found = compare_per_mixture(
        Path(joint_eval) / "joint_model" / "per_mixture.csv",
        Path(joint_eval) / untrained.replace(" ", "_") / "per_mixture.csv",
        ["si_sdri"],
        samples=record["samples"],
        seed=record["seed"],
        confidence=record["confidence"],
    )["si_sdri"]
    return {
        "SI-SDRi (dB)": {
            "difference": round(found["difference"], 3),
            "interval": _range(found["interval"], 1.0, 3),
            "verdict": verdict(found["interval"], lower_is_better=False),
            "n_mixtures": found["n"],
        }
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


def _cell(value, digits=2, interval=None):
    if value is None:
        return "n/a"
    if interval is None:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"


def _claim(system, other, found, unit):
    """One line of the comparisons: the paired difference, its interval and what it supports
    (no claim without an interval)."""
    if found["interval"] is None:
        return f"- {system} vs {other}: {unit} difference {found['difference']:+.2f} (no interval)"
    low, high = found["interval"]
    return (
        f"- {system} {found['verdict']} {other}: {unit} difference {found['difference']:+.2f} "
        f"[{low:+.2f}, {high:+.2f}]"
        + (" (the interval contains 0)" if found["verdict"] == "matches" else "")
    )


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
    speaker_metrics = _read(files["speaker"])
    speaker = speaker_rows(speaker_metrics)
    comparisons = speaker_comparisons(speaker_metrics)
    joint = _read(files["joint"])
    separation, identification, check = separation_rows(_read(files["separation"]), joint)
    joint_comparison = separation_comparison(files["joint"].parent, joint)
    speaker_note = interval_note(
        next(iter(speaker_metrics["models"].values()))["verification"]["cosine"]
        .get("intervals", {})
        .get("eer")
    )
    separation_note = interval_note(
        joint["systems"]["joint model"]["separation"]["si_sdri"].get("interval")
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
            f"| {name} | {_cell(r['eer'], 2, r['eer_ci'])} | "
            f"{_cell(r['min_dcf'], 3, r['min_dcf_ci'])} | "
            f"{_cell(r['tar_at_far_1pct'], 1)} | {_cell(r['top1'], 1)} |"
        )
    lines += ["", f"From `{files['speaker']}`. {speaker_note}".rstrip()]
    if comparisons:
        lines += [
            "",
            "Paired differences on the same trials (system minus other; the same speaker "
            "resamples for both; 'beats' / 'is worse than' only where the interval excludes 0):",
            "",
        ]
        for pair, metrics in comparisons.items():
            system, other = pair.split(" vs ")
            lines.append(_claim(system, other, metrics["EER"], "EER (points)"))
            lines.append(_claim(system, other, metrics["minDCF"], "minDCF"))
    lines += [
        "",
        "Separation of two-speaker mixtures of the unseen speakers (8 kHz, mean over mixtures; "
        "dB except PESQ, STOI)",
        "",
        f"| system | {' | '.join(n for n, _ in SEPARATION_KEYS)} |",
        "|---" * (len(SEPARATION_KEYS) + 1) + "|",
    ]
    for name, r in separation.items():
        cells = [_cell(r[k], 2, r[f"{k}_ci"]) for _, k in SEPARATION_KEYS]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    lines += [
        "",
        f"From `{files['joint']}` (the separation evaluation, `{files['separation']}`, "
        f"measured the untrained separator at SI-SDRi {_cell(check['si_sdri'])} dB on the "
        f"same mixtures). {separation_note}".rstrip(),
    ]
    if joint_comparison is not None:
        found = joint_comparison["SI-SDRi (dB)"]
        lines += [
            "",
            _claim(
                "the jointly trained separator",
                "the untrained one",
                found,
                f"SI-SDRi (dB, paired over the {found['n_mixtures']} mixtures)",
            ),
        ]
    lines += [
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
        "speaker_comparisons": comparisons,
        "separation": separation,
        "separation_comparison": joint_comparison,
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

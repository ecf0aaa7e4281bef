"""Markdown tables of results, written next to ``metrics.json`` and quoted in the recipe READMEs and docs/demo.md."""

SPEAKER_ROWS = (
    ("EER (%)", "eer", 100.0),
    ("minDCF p=0.01 (norm.)", "min_dcf@0.01", 1.0),
    ("minDCF p=0.05 (norm.)", "min_dcf@0.05", 1.0),
    ("TAR @ FAR 1% (%)", "tar@far=0.01", 100.0),
    ("TAR @ FAR 0.1% (%)", "tar@far=0.001", 100.0),
    ("verification accuracy at EER threshold (%)", "accuracy_at_eer_threshold", 100.0),
)


def _fmt(value, scale, interval=None):
    """``value`` scaled, with its confidence interval ``[low, high]`` when it has one."""
    if value is None:
        return "n/a"
    if interval is None:
        return f"{value * scale:.2f}"
    return f"{value * scale:.2f} [{interval['low'] * scale:.2f}, {interval['high'] * scale:.2f}]"


def interval_note(interval):
    """The sentence under a table that says what its brackets are."""
    if interval is None:
        return ""
    unit = {"speaker": "speakers", "item": "mixtures"}.get(interval["unit"], interval["unit"])
    return (
        f"[low, high]: {100 * interval['confidence']:g} % bootstrap confidence interval "
        f"(percentile; {interval['samples']} resamples of the {interval['n_units']} {unit} "
        f"with replacement, seed {interval['seed']})."
    )


def speaker_results_table(report, command):
    """One row per metric, one column per model (``report[model][set] -> metrics``)."""
    models = list(report)
    lines = [f"| metric | {' | '.join(models)} |", "|---" * (len(models) + 1) + "|"]
    first = report[models[0]]
    note = None
    for set_name in first:
        if set_name.startswith("identification_"):
            for method in ("embedding", "classifier"):
                for k in ("top1", "top5"):
                    vals = [report[m][set_name].get(method, {}).get(k) for m in models]
                    if all(v is None for v in vals):
                        continue
                    label = f"{set_name} {method} {k} accuracy (%)"
                    lines.append(f"| {label} | {' | '.join(_fmt(v, 100.0) for v in vals)} |")
            continue
        for scoring in first[set_name]:
            for label, key, scale in SPEAKER_ROWS:
                if key not in first[set_name][scoring]:
                    continue
                metrics = [report[m][set_name][scoring] for m in models]
                cells = []
                for m in metrics:
                    interval = m.get("intervals", {}).get(key)
                    note = note or interval
                    cells.append(_fmt(m.get(key), scale, interval))
                lines.append(f"| {set_name} {scoring} {label} | {' | '.join(cells)} |")
    lines.append("")
    if note is not None:
        lines += [interval_note(note), ""]
    lines.append(f"Command: `{command}`")
    return "\n".join(lines) + "\n"


SEPARATION_COLUMNS = (
    ("SI-SDR", "si_sdr"),
    ("SI-SDRi", "si_sdri"),
    ("SDR", "sdr"),
    ("SDRi", "sdri"),
    ("SIR", "sir"),
    ("SAR", "sar"),
    ("PESQ", "pesq"),
    ("STOI", "stoi"),
)


def _mean(summary, key):
    stats = summary.get(key)
    if not stats or stats["mean"] is None:
        return "n/a"
    missing = f" ({stats['n_missing']} missing)" if stats["n_missing"] else ""
    return f"{_fmt(stats['mean'], 1.0, stats.get('interval'))}{missing}"


def separation_results_table(summaries, speaker_report, sample_rate, command):
    """Separation metrics (mean over mixtures, dB except PESQ/STOI), one row per system, and
    speaker identification accuracy on separated outputs with the clean/mixture bounds.

    Only the metrics that some summary holds get a column (an evaluation run with
    ``separation_metrics: [si_sdr]`` shows SI-SDR and SI-SDRi); a system without one shows
    ``n/a`` there."""
    shown = [(n, k) for n, k in SEPARATION_COLUMNS if any(k in s for s in summaries.values())]
    names = [n for n, _ in shown]
    lines = [
        f"Separation metrics at {sample_rate} Hz (mean over mixtures; dB except PESQ, STOI)",
        "",
        f"| system | {' | '.join(names)} |",
        "|---" * (len(names) + 1) + "|",
    ]
    note = None
    for system, summary in summaries.items():
        cells = [_mean(summary, key) for _, key in shown]
        lines.append(f"| {system} | {' | '.join(cells)} |")
        note = note or next((s["interval"] for s in summary.values() if s.get("interval")), None)
    if note is not None:
        lines += ["", interval_note(note)]
    if speaker_report:
        lines += [
            "",
            "Speaker identification accuracy (%) (outputs labelled through the SI-SDR permutation)",
            "",
            "| speaker model | method | separated outputs | clean sources (upper bound) "
            "| raw mixture (lower bound, at most 50) |",
            "|---|---|---|---|---|",
        ]
        for model, conditions in speaker_report.items():
            for method in ("embedding", "classifier"):
                if method not in conditions.get("separated", {}):
                    continue
                cells = []
                for condition in ("separated", "clean", "mixture"):
                    acc = conditions[condition][method]
                    value = "n/a" if acc["accuracy"] is None else f"{100 * acc['accuracy']:.2f}"
                    cells.append(f"{value} (n={acc['n']})")
                lines.append(f"| {model} | {method} | {' | '.join(cells)} |")
    lines += ["", f"Command: `{command}`"]
    return "\n".join(lines) + "\n"

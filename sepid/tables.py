"""Markdown tables of results, written next to ``metrics.json`` and pasted into the README."""

SPEAKER_ROWS = (
    ("EER (%)", "eer", 100.0),
    ("minDCF p=0.01 (norm.)", "min_dcf@0.01", 1.0),
    ("minDCF p=0.05 (norm.)", "min_dcf@0.05", 1.0),
    ("TAR @ FAR 1% (%)", "tar@far=0.01", 100.0),
    ("TAR @ FAR 0.1% (%)", "tar@far=0.001", 100.0),
    ("verification accuracy at EER threshold (%)", "accuracy_at_eer_threshold", 100.0),
)


def _fmt(value, scale):
    return "n/a" if value is None else f"{value * scale:.2f}"


def speaker_results_table(report, command):
    """One row per metric, one column per model (``report[model][set] -> metrics``)."""
    models = list(report)
    lines = [f"| metric | {' | '.join(models)} |", "|---" * (len(models) + 1) + "|"]
    first = report[models[0]]
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
                vals = [report[m][set_name][scoring].get(key) for m in models]
                row = f"{set_name} {scoring} {label}"
                lines.append(f"| {row} | {' | '.join(_fmt(v, scale) for v in vals)} |")
    lines.append("")
    lines.append(f"Command: `{command}`")
    return "\n".join(lines) + "\n"

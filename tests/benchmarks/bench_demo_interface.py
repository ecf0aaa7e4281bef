#!/usr/bin/env python3
"""The offline demo's verification trials scored through its exported speaker interface
(``encode_file`` of each utterance, as a user calls it) against the scores
``recipes/speaker/evaluate.py`` wrote for the same model: one embedding path (issue 18).

Run after ``python recipes/demo/run.py``: ``python tests/benchmarks/bench_demo_interface.py``.
Writes ``tests/benchmarks/results/demo_interface.json`` (the evaluation's CSV keeps 6 decimals).
"""

import csv

import numpy as np
import torch
from bench_common import REPO, write_result
from speechbrain.inference.interfaces import foreign_class

from sepid.speaker.metrics import verification_metrics

run = REPO / "results/demo/speaker/1986"
data_root = REPO / "tests/samples/librispeech-mini/test-other"
utts = {}
with open(run / "prep_eval/veri_utts.csv") as f:
    for row in csv.DictReader(f):
        utts[row["ID"]] = row
model = foreign_class(
    source=str(REPO / "results/demo/speaker-export"),
    pymodule_file="custom_interface.py",
    classname="WavLMSpeakerInterface",
    savedir=str(REPO / "results/demo/tmp/iface"),
)
emb = {}
for uid, row in utts.items():
    path = row["wav"].replace("$data_root", str(data_root))
    assert "start" not in row or float(row.get("start") or 0) == 0.0, row
    emb[uid] = torch.nn.functional.normalize(model.encode_file(path), dim=-1)
scores, labels, evals = [], [], []
with open(run / "eval/scores_verification.csv") as f:
    for row in csv.DictReader(f):
        scores.append(float((emb[row["enrol"]] * emb[row["test"]]).sum()))
        labels.append(int(row["label"]))
        evals.append(float(row["finetuned_cosine"]))
scores, labels, evals = map(np.asarray, (scores, labels, evals))
m_iface = verification_metrics(scores, labels)
m_eval = verification_metrics(evals, labels)
out = {
    "trials": int(len(scores)),
    "utterances": len(emb),
    "max_abs_score_diff": float(np.abs(scores - evals).max()),
    "interface_eer_pct": round(100 * m_iface["eer"], 2),
    "evaluation_eer_pct": round(100 * m_eval["eer"], 2),
    "interface_min_dcf@0.01": round(m_iface["min_dcf@0.01"], 3),
    "evaluation_min_dcf@0.01": round(m_eval["min_dcf@0.01"], 3),
}
write_result(REPO / "tests/benchmarks/results/demo_interface.json", out)

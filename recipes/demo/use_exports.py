#!/usr/bin/env python3
"""The demo's last stage: the two exported models loaded as a user loads them (``foreign_class``
from the exported folders; a Hub id works the same way), then used::

    python recipes/demo/use_exports.py --speaker results/demo/exports/speaker \\
        --joint results/demo/exports/joint --mixtures results/demo/mixtures --out results/demo/use

- the speaker model verifies a different-speaker pair (the first test mixture's two sources) and
  a same-speaker pair (its first source and an enrolment utterance of that speaker): unseen
  speakers;
- the joint model separates that mixture into ``<out>/separated/`` and names each output by the
  closest training speaker, then, after enrolling the test speakers from their enrolment
  utterances (``--enrol_csv``, a manifest disjoint from the mixtures' sources), by them.

Everything printed is also written to ``<out>/use.json``.
"""

import argparse
import json
import sys
from pathlib import Path

from speechbrain.inference.interfaces import foreign_class

from sepid.data.manifest import read_csv, resolve_path, write_atomic
from sepid.data.schema import MIXTURE_COLUMNS, UTTERANCE_COLUMNS


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--speaker", required=True, help="exported speaker model (folder or id)")
    parser.add_argument("--joint", required=True, help="exported joint model (folder or id)")
    parser.add_argument("--mixtures", required=True, help="make_mixtures.py --save_folder")
    parser.add_argument(
        "--enrol_csv", required=True, help="manifest of enrolment utterances (iden_enrol.csv)"
    )
    parser.add_argument("--enrol_data_folder", required=True, help="its $data_root")
    parser.add_argument("--out", required=True, help="folder for the separated files")
    args = parser.parse_args(argv)

    test = read_csv(Path(args.mixtures) / "test.csv", MIXTURE_COLUMNS)
    if len(test) < 2:
        raise SystemExit(
            f"{args.mixtures}/test.csv: need at least 2 test mixtures, found {len(test)}"
        )
    first = test[0]
    mix, s1, s2 = (resolve_path(first[k], args.mixtures) for k in ("mix_wav", "s1_wav", "s2_wav"))
    enrol = {}
    for row in read_csv(args.enrol_csv, UTTERANCE_COLUMNS):
        enrol.setdefault(row["spk_id"], []).append(resolve_path(row["wav"], args.enrol_data_folder))
    same = enrol.get(first["s1_spk"], [])

    spk = foreign_class(
        source=args.speaker,
        pymodule_file="custom_interface.py",
        classname="WavLMSpeakerInterface",
        savedir=str(Path(args.out) / "loaded" / "speaker"),
    )
    report = {"speaker_model": args.speaker, "joint_model": args.joint, "mixture": mix}
    pairs = {"different speakers": (s1, s2)}
    if same:
        pairs["same speaker"] = (s1, same[0])
    report["verification"] = {}
    for name, (a, b) in pairs.items():
        score, decision = spk.verify_files(a, b)
        report["verification"][name] = {
            "files": [a, b],
            "score": round(float(score), 4),
            "same": bool(decision),
        }
        print(f"verify ({name}): score {float(score):.3f}, same speaker: {bool(decision)}")

    sep = foreign_class(
        source=args.joint,
        pymodule_file="custom_interface.py",
        classname="SepformerSpeakerInterface",
        savedir=str(Path(args.out) / "loaded" / "joint"),
    )
    truth = sorted([first["s1_spk"], first["s2_spk"]])
    report["true_speakers"] = truth
    save = Path(args.out) / "separated"
    report["separated"] = []
    for s in sep.separate_file(mix, save_folder=str(save)):
        report["separated"].append({"path": str(s.path), "speaker": s.speaker, "score": s.score})
        print(f"separated: {s.path} -> training speaker {s.speaker} (score {s.score:.3f})")
    sep.enrol(enrol)
    report["enrolled"] = sorted(enrol)
    report["separated_enrolled"] = []
    for s in sep.separate_file(mix, save_folder=str(save / "enrolled")):
        report["separated_enrolled"].append(
            {"path": str(s.path), "speaker": s.speaker, "score": s.score}
        )
        print(f"separated: {s.path} -> enrolled speaker {s.speaker} (score {s.score:.3f})")
    print(f"true speakers of the mixture: {', '.join(truth)}")
    out = Path(args.out) / "use.json"
    write_atomic(out, json.dumps(report, indent=2))
    print(f"Written: {out}")


if __name__ == "__main__":
    sys.exit(main())

"""The README's "Use a trained model" Python snippets run as written against the tiny exported
models, with real LibriSpeech files in place of the example paths, so the README stays true."""

import csv
import re
from pathlib import Path

import pytest
import soundfile as sf
import torch

from pretrained_interfaces.export import export_speaker
from tests.helpers import CORPUS, ROOT, held_out_test_mixtures

SECTION = "## Use a trained model"
SPEAKER_FILES = {  # example path in the README -> a real file (same speaker for a and b)
    "a.wav": CORPUS / "1688" / "1688-142285-0007.flac",
    "b.wav": CORPUS / "1688" / "1688-142285-0008.flac",
}
ENROLMENT = {  # the joint snippet's enrolment examples -> utterances of two training speakers
    "alice1.wav": CORPUS / "1998" / "1998-15444-0001.flac",
    "alice2.wav": CORPUS / "1998" / "1998-15444-0002.flac",
    "bob1.wav": CORPUS / "2033" / "2033-164914-0001.flac",
    "bob.wav": CORPUS / "2033" / "2033-164914-0002.flac",
}


def snippets():
    """The ```python blocks of the README's "Use a trained model" section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    section = text[start : end if end >= 0 else None]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def substitute(code, paths):
    """Replaces each quoted example path with the real one."""
    for example, real in paths.items():
        code = re.sub(rf"([\"']){re.escape(example)}\1", repr(str(real)), code)
    return code


@pytest.fixture(scope="module")
def speaker_folder(speaker_experiment, tmp_path_factory):
    """The tiny model exported with a stored threshold (as after evaluate.py)."""
    out = tmp_path_factory.mktemp("readme") / "spk"
    return export_speaker(run_folder=speaker_experiment, out=out, threshold=0.5)


def test_the_section_has_python_snippets():
    blocks = snippets()
    assert blocks and any("foreign_class" in b for b in blocks)


def test_readme_snippets_run(speaker_folder, speaker_experiment, request, tmp_path):
    blocks = snippets()
    paths = {"exported/spk": speaker_folder, **SPEAKER_FILES, **ENROLMENT}
    if any("exported/joint" in b for b in blocks):  # the joint model's snippet, when there is one
        mixtures = held_out_test_mixtures(speaker_experiment, tmp_path / "mix", 1)
        with open(mixtures / "test.csv", newline="") as f:
            mix = next(csv.DictReader(f))["mix_wav"].replace("$data_root", str(mixtures))
        paths["exported/joint"] = request.getfixturevalue("exported_joint")
        paths.update(dict.fromkeys(("mixture.wav", "meeting.wav"), mix))
        paths["out/"] = tmp_path / "out"
    # the names the snippets use without defining: a padded batch of two 16 kHz utterances
    signals = [torch.from_numpy(sf.read(f, dtype="float32")[0]) for f in SPEAKER_FILES.values()]
    longest = max(s.shape[0] for s in signals)
    namespace = {
        "wavs": torch.stack(
            [torch.nn.functional.pad(s, (0, longest - s.shape[0])) for s in signals]
        ),
        "wav_lens": torch.tensor([s.shape[0] / longest for s in signals]),
    }
    for i, block in enumerate(blocks):
        exec(
            compile(substitute(block, paths), f"README.md python block {i + 1}", "exec"), namespace
        )
    # what the speaker snippet promises
    score, same = namespace["score"], namespace["same"]
    assert isinstance(score, float) and isinstance(same, bool)
    assert namespace["emb"].dim() == 1 and abs(float(namespace["emb"].norm()) - 1) < 1e-5
    assert namespace["embs"].shape == (2, namespace["emb"].shape[0])
    top = namespace["top"]
    assert len(top) == 5 and all(isinstance(s, str) and isinstance(v, float) for s, v in top)
    if "exported/joint" in paths:
        written = list(Path(paths["out/"]).glob("*.wav"))
        assert len(written) >= 2  # each source of the mixture, named by its speaker

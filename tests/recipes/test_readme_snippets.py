"""The Markdown pages' code runs as written, so the pages stay true: the "Use a trained model"
Python snippets (the top README's and docs/using-models.md's) against the tiny exported models,
with real LibriSpeech files in place of the example paths, and docs/using-models.md's "Publish"
commands and snippets against the local Hub stand-in (tests/hub_server.py). Every ```python block
of every Markdown page of the repository is in a section that a test here runs."""

import csv
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import soundfile as sf
import torch

from pretrained_interfaces.export import export_speaker
from tests.helpers import CORPUS, ROOT, held_out_test_mixtures, python_on_path
from tests.hub_server import HubServer
from tests.markdown import code_blocks, markdown_files, section, sections

USE = {  # the "Use a trained model" sections -> the names their Python blocks must define
    ("README.md", "## Use a trained model"): {"score", "same"},
    ("docs/using-models.md", "## Use a trained model"): {"score", "same", "emb", "embs", "top"},
}
PUBLISH = ("docs/using-models.md", "## Publish")
SPEAKER_FILES = {  # example path in a page -> a real file (same speaker for a and b)
    "a.wav": CORPUS / "1688" / "1688-142285-0007.flac",
    "b.wav": CORPUS / "1688" / "1688-142285-0008.flac",
}
ENROLMENT = {  # the joint snippet's enrolment examples -> utterances of two training speakers
    "alice1.wav": CORPUS / "1998" / "1998-15444-0001.flac",
    "alice2.wav": CORPUS / "1998" / "1998-15444-0002.flac",
    "bob1.wav": CORPUS / "2033" / "2033-164914-0001.flac",
    "bob.wav": CORPUS / "2033" / "2033-164914-0002.flac",
}


def snippets(page, heading, language="python"):
    """The ```python (or other ``language``) blocks of a ``## heading`` section of a page."""
    return code_blocks(section(page, heading), language)


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


def test_every_python_block_of_every_page_runs_here():
    """A ```python block anywhere in the repository's Markdown is in a section run below (a new
    one fails here until a test runs it), and every section run below still has its blocks."""
    with_code = {
        (page, heading)
        for page in markdown_files()
        for heading, text in sections(page).items()
        if code_blocks(text)
    }
    assert with_code == set(USE) | {PUBLISH}
    for page, heading in USE:
        assert any("foreign_class" in b for b in snippets(page, heading))


@pytest.mark.parametrize("page, heading", list(USE), ids=[p for p, _ in USE])
def test_readme_snippets_run(page, heading, speaker_folder, speaker_experiment, request, tmp_path):
    blocks = snippets(page, heading)
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
        exec(compile(substitute(block, paths), f"{page} python block {i + 1}", "exec"), namespace)
    # what the speaker snippets promise
    assert USE[page, heading] <= namespace.keys()
    score, same = namespace["score"], namespace["same"]
    assert isinstance(score, float) and isinstance(same, bool)
    if "emb" in USE[page, heading]:
        assert namespace["emb"].dim() == 1 and abs(float(namespace["emb"].norm()) - 1) < 1e-5
        assert namespace["embs"].shape == (2, namespace["emb"].shape[0])
        top = namespace["top"]
        assert len(top) == 5 and all(isinstance(s, str) and isinstance(v, float) for s, v in top)
    if "exported/joint" in paths:
        written = list(Path(paths["out/"]).glob("*.wav"))
        assert len(written) >= 2  # each source of the mixture, named by its speaker


TOKEN = "hf_readme_secret_0123456789"


def test_publish_section_runs_against_the_hub_stand_in(
    speaker_experiment, joint_run, tmp_path, request
):
    """docs/using-models.md's "Publish" commands (export + push of both models, then --push-only) with the tiny runs
    in place of results/..., then its Python blocks as a Hub user (empty cache, HF_TOKEN set)."""
    run, _ = joint_run
    paths = {
        # the tiny run was not evaluated: the threshold evaluate.py would have measured
        "results/wavlm-lora-arcface/1986": f"{speaker_experiment} --threshold 0.5",
        "results/sepformer-wavlm-speaker/1986": run,
        "exported/spk": tmp_path / "spk",
        "exported/joint": tmp_path / "joint",
    }
    commands = [
        c for block in snippets(*PUBLISH, "bash") for c in block.replace("\\\n", " ").splitlines()
    ]
    commands = [c for c in commands if c.strip() and not c.startswith("export HF_TOKEN")]
    assert any("--push-only" in c for c in commands) and len(commands) == 3
    with HubServer(token=TOKEN) as hub:
        env = {
            **os.environ,
            "HF_ENDPOINT": hub.url,
            "HF_TOKEN": TOKEN,
            "HF_HOME": str(tmp_path / "hf-push"),
        }
        env = python_on_path(env)  # the commands' `python` forked (tests/forkclient.py)
        for command in commands:
            for example, real in paths.items():
                command = command.replace(example, str(real))
            proc = subprocess.run(
                ["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True
            )
            assert proc.returncode == 0, f"{command}\n{proc.stderr[-3000:]}"
            assert TOKEN not in proc.stdout + proc.stderr
        assert {"me/wavlm-lora-spk", "me/sepformer-wavlm-spk"} <= hub.private
        mixtures = held_out_test_mixtures(speaker_experiment, tmp_path / "mix", 1)
        with open(mixtures / "test.csv", newline="") as f:
            mix = next(csv.DictReader(f))["mix_wav"].replace("$data_root", str(mixtures))
        files = {**SPEAKER_FILES, "mixture.wav": mix, "out/": tmp_path / "out"}
        blocks = snippets(*PUBLISH)
        assert any("FetchConfig(token=True" in b for b in blocks)
        assert any(".from_hparams(" in b and "hf_hub_download" in b for b in blocks)
        for i, block in enumerate(blocks):
            code = substitute(block, files) + "\nprint('ran block', " + str(i) + ")\n"
            proc = hub.load(code, str(tmp_path / f"hf-load-{i}"), token=True)
            assert f"ran block {i}" in proc.stdout
            assert TOKEN not in proc.stdout + proc.stderr
    assert len(list((tmp_path / "out").glob("*.wav"))) >= 2
    shutil.rmtree(tmp_path / "out")

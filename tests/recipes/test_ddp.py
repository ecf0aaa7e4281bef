"""torchrun DDP on CPU (gloo), as SpeechBrain supports it: the speaker recipe trains and
evaluates with two processes; evaluation items are sharded, so each is embedded once, and the
scores equal one process's."""

import json

import pytest
import torch

from sepid.data.manifest import read_csv
from tests.helpers import run_script


def test_torchrun_two_processes_train_and_evaluate(
    tmp_path, speaker_recipe, speaker_torchrun, monkeypatch
):
    """The training is the session's torchrun speaker run (tests/conftest.py::speaker_torchrun,
    2 epochs, the resume test's uninterrupted run too), evaluated here with two processes and
    with one."""
    ddp = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    evaluate = "recipes/speaker/evaluate.py"
    _, trained = speaker_torchrun
    out, gloo = f"--output_folder={trained}", "--distributed_backend=gloo"
    # logged once per epoch, not per rank
    assert len((trained / "train_log.txt").read_text().strip().splitlines()) == 2
    # at the YAML's eval_batch_size: a shard's batches hold other utterances than one process's,
    # and an utterance's embedding does not depend on its batch (issue 18)
    run_script([*ddp, *speaker_recipe.command(evaluate, gloo, out)])
    result = json.loads((trained / "eval" / "metrics.json").read_text())
    assert result["models"]["finetuned"]["verification"]["cosine"]["n_target"] > 0
    cache = torch.load(trained / "eval" / "embeddings_finetuned.pt", weights_only=True)
    assert len(cache["ids"]) == len(set(cache["ids"])) == 75  # 50 eval + 25 train-speaker utts
    # a single-process rerun finds every embedding in the cache the two ranks wrote
    log = run_script(speaker_recipe.command(evaluate, out))
    assert "75 utterances, 75 cached, 0 to embed" in log
    # one process from scratch (no cache, one thread as each rank had) scores every trial as the
    # two ranks did
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    alone = tmp_path / "eval-one-process"
    run_script(speaker_recipe.command(evaluate, out, f"--eval_folder={alone}"))
    two_ranks, one = (
        read_csv(trained / "eval" / "scores_verification.csv"),
        read_csv(alone / "scores_verification.csv"),
    )
    assert len(two_ranks) == len(one) > 0
    for a, b in zip(two_ranks, one, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if key.endswith(("_cosine", "_asnorm")):
                assert float(a[key]) == pytest.approx(float(b[key]), abs=1e-5), key
            else:
                assert a[key] == b[key], key
    cosine = [json.loads((f / "metrics.json").read_text()) for f in (trained / "eval", alone)]
    eers = [m["models"]["finetuned"]["verification"]["cosine"]["eer"] for m in cosine]
    assert eers[0] == pytest.approx(eers[1], abs=1e-6)


def test_torchrun_evaluates_an_exported_speaker_model(tmp_path, exported_speaker, speaker_recipe):
    """--speaker_source under torchrun: one process fetches the export, then every rank loads it
    (a model loaded with foreign_class does not pickle, so it cannot be broadcast)."""
    ddp = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    run_script(
        [
            *ddp,
            *speaker_recipe.command(
                "recipes/speaker/evaluate.py",
                "--distributed_backend=gloo",
                f"--output_folder={tmp_path}",
                f"--speaker_source={exported_speaker}",
            ),
        ]
    )
    result = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert result["models"]["exported"]["verification"]["cosine"]["n_target"] > 0

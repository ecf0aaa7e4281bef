"""torchrun DDP on CPU (gloo), as SpeechBrain supports it: the speaker recipe trains and
evaluates with two processes; evaluation items are sharded, so each is embedded once."""

import json

import torch

from tests.helpers import run_script


def test_torchrun_two_processes_train_and_evaluate(tmp_path, speaker_recipe):
    ddp = ["-m", "torch.distributed.run", "--nproc_per_node=2"]
    train, evaluate = "recipes/speaker/train.py", "recipes/speaker/evaluate.py"
    out, gloo = f"--output_folder={tmp_path}", "--distributed_backend=gloo"
    run_script([*ddp, *speaker_recipe.command(train, gloo, out, "--number_of_epochs=1")])
    assert len((tmp_path / "train_log.txt").read_text().strip().splitlines()) == 1
    run_script([*ddp, *speaker_recipe.command(evaluate, gloo, out)])
    result = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert result["models"]["finetuned"]["verification"]["cosine"]["n_target"] > 0
    cache = torch.load(tmp_path / "eval" / "embeddings_finetuned.pt", weights_only=True)
    assert len(cache["ids"]) == len(set(cache["ids"])) == 75  # 50 eval + 25 train-speaker utts
    # a single-process rerun finds every embedding in the cache the two ranks wrote
    log = run_script(speaker_recipe.command(evaluate, out))
    assert "75 utterances, 75 cached, 0 to embed" in log


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

"""The SLURM launcher's dry run prints a torchrun command that torchrun and SpeechBrain parse
into the intended multi-node job (no cluster is reachable here)."""

import os
import shlex
import subprocess
from pathlib import Path

import pytest
import speechbrain as sb
from torch.distributed.run import get_args_parser

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "recipes/slurm/torchrun.sbatch"


def dry_run(*args, **env):
    out = subprocess.run(
        ["bash", str(SCRIPT), *args],
        cwd=ROOT,
        env={**os.environ, "DRY_RUN": "1", **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    argv = shlex.split(out)
    assert argv[0] == "torchrun"
    return get_args_parser().parse_args(argv[1:])


@pytest.mark.parametrize(
    "recipe",
    [
        ["recipes/speaker/train.py", "hparams/wavlm-lora-arcface.yaml"],
        ["recipes/speaker/evaluate.py", "hparams/wavlm-lora-arcface.yaml"],
        ["recipes/joint/train.py", "hparams/sepformer-wavlm-speaker.yaml"],
        ["recipes/joint/evaluate.py", "hparams/sepformer-wavlm-speaker.yaml"],
        ["recipes/separation/evaluate.py", "hparams/separation-eval.yaml"],
    ],
)
def test_dry_run_is_a_multi_node_torchrun_of_the_recipe(recipe):
    args = dry_run(
        *recipe,
        "--data_folder",
        "/data/vox 2",  # a space survives the quoting
        "--number_of_epochs=3",
        SLURM_JOB_NUM_NODES="4",
        SLURM_GPUS_PER_NODE="h100:8",
        SLURM_JOB_ID="777",
        HEAD_NODE="node017",
        MASTER_PORT="29611",
    )
    assert (args.nnodes, args.nproc_per_node) == ("4", "8")
    assert (args.rdzv_backend, args.rdzv_endpoint, args.rdzv_id) == ("c10d", "node017:29611", "777")
    assert args.training_script == recipe[0] and (ROOT / recipe[0]).is_file()
    hparams_file, run_opts, overrides = sb.parse_arguments(args.training_script_args)
    assert hparams_file == recipe[1] and (ROOT / recipe[1]).is_file()
    assert "data_folder: /data/vox 2" in overrides and "number_of_epochs: 3" in overrides


def test_dry_run_outside_slurm_is_one_local_node():
    args = dry_run("recipes/speaker/train.py", "hparams/wavlm-lora-arcface.yaml")
    assert (args.nnodes, args.nproc_per_node, args.rdzv_endpoint) == ("1", "1", "localhost:29500")


def test_usage_error_without_a_recipe():
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 2 and "usage:" in proc.stderr

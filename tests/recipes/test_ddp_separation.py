"""torchrun DDP on CPU (gloo) for the separation side: the separation evaluation shards the
mixtures across ranks and gathers them, so its metrics files equal a single process's; dynamic
mixing gives each rank its own mixtures, reproducibly; the joint recipe reduces its validation
metrics across ranks before it chooses and writes a checkpoint, once."""

import json
import re

import pytest

from sepid.data.manifest import read_csv
from tests.helpers import CORPUS, held_out_test_mixtures, run_script

# --standalone: a free rendezvous port, so that runs in parallel (other tests, other jobs on the
# machine) do not meet on torchrun's default port 29500
DDP = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def test_torchrun_separation_evaluation_equals_one_process(
    speaker_experiment, exported_speaker, separation_recipe, tmp_path, monkeypatch
):
    """6 mixtures on 2 ranks (3 each): every metrics file of the two-process run equals the
    one-process run's, exactly (tolerance 0: the same bytes in the CSVs, the same floats in
    metrics.json). Both runs compute with one thread per process (torchrun's default with
    several processes), so the arithmetic is the same. Each rank takes its share longest first,
    so the gathered order differs from one process's: the rows are written in mixture-ID
    order."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    mixtures = held_out_test_mixtures(speaker_experiment, tmp_path / "mix", 6)
    common = [
        f"--data_folder={mixtures}",
        f"--speaker_source={exported_speaker}",
        f"--enrol_csv={speaker_experiment / 'prep' / 'iden_enrol.csv'}",
        f"--enrol_data_folder={CORPUS}",
    ]
    two, one = tmp_path / "two", tmp_path / "one"
    evaluate = "recipes/separation/evaluate.py"
    gloo = "--distributed_backend=gloo"
    run_script(
        [*DDP, *separation_recipe.command(evaluate, *common, f"--output_folder={two}", gloo)]
    )
    run_script(separation_recipe.command(evaluate, *common, f"--output_folder={one}"))
    ids = [r["ID"] for r in read_csv(mixtures / "test.csv")]
    for table in ("per_mixture.csv", "mixture/per_mixture.csv"):
        rows = read_csv(two / "eval" / table)
        assert sorted(r["ID"] for r in rows[:-1]) == sorted(ids), table  # each mixture once
        assert (two / "eval" / table).read_text() == (one / "eval" / table).read_text(), table
    metrics_two = json.loads((two / "eval" / "metrics.json").read_text())
    metrics_one = json.loads((one / "eval" / "metrics.json").read_text())
    assert metrics_two.pop("command") != metrics_one.pop("command")  # each run's output folder
    assert metrics_two == metrics_one
    assert metrics_one["n_mixtures"] == 6
    assert metrics_one["speaker_identification"]["finetuned"]["separated"]["embedding"]["n"] == 12


# ------------------------------------------------------------------------------------------------
# The joint recipe's training side under torchrun, recorded rank by rank by this file run as a
# script (``record_ranks`` below): the recipe's own datasets, Brain and SpeechBrain's DDP loader.

# Validation numbers each rank "measures" in epochs 1, 2, 3 (2 mixtures each). The global means
# are -1.0, 2.5, 1.5: the two best epochs are 2 and 3. Rank 0 alone (3.0, 1.0, 2.0) would keep 1
# and 3.
RANK_SI_SNRI = {0: [[3.0, 3.0], [1.0, 1.0], [2.0, 2.0]], 1: [[-5.0, -5.0], [4.0, 4.0], [1.0, 1.0]]}
RANK_LOSS = {0: [1.0, 2.0, 3.0], 1: [3.0, 4.0, 5.0]}


@pytest.fixture(scope="module")
def joint_ranks(speaker_experiment, exported_speaker, joint_recipe, tmp_path_factory):
    """Two torchrun runs of :func:`record_ranks` (2 processes each, 6 dynamic mixtures an
    epoch); returns ``(output folder of the first, [per-rank records of each run])``."""
    work = tmp_path_factory.mktemp("joint-ddp")
    runs = []
    for k in (1, 2):
        out = work / f"ranks{k}"
        out.mkdir()
        run_script(
            [
                *DDP,
                "-m",
                "tests.recipes.test_ddp_separation",
                out,
                *joint_recipe.args(
                    f"--output_folder={work / f'run{k}'}",
                    f"--speaker_source={exported_speaker}",
                    f"--speaker_manifest={speaker_experiment / 'prep' / 'train.csv'}",
                    "--n_train_mixtures=6",
                    "--distributed_backend=gloo",
                ),
            ]
        )
        runs.append([json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)])
    return work / "run1", runs


def test_dynamic_mixing_gives_each_rank_its_own_mixtures_reproducibly(joint_ranks):
    _, runs = joint_ranks
    first, second = runs
    assert first == second  # the same mixtures on the same ranks, run after run
    rank0, rank1 = first
    for epoch in ("1", "2"):
        mine, theirs = rank0["sampled"][epoch], rank1["sampled"][epoch]
        assert len(mine) == len(theirs) == 3
        # disjoint: different items, different mixtures
        assert not {m[0] for m in mine} & {m[0] for m in theirs}
        assert not {m[3] for m in mine} & {m[3] for m in theirs}
        # together, exactly the epoch one process draws (every rank's dataset draws the same)
        assert rank0["epoch"][epoch] == rank1["epoch"][epoch]
        assert sorted(mine + theirs) == sorted(rank0["epoch"][epoch])
    # another epoch, other mixtures
    hashes = {e: {m[3] for m in rank0["epoch"][e]} for e in ("1", "2")}
    assert not hashes["1"] & hashes["2"]


def test_joint_validation_is_reduced_across_ranks_before_checkpointing(joint_ranks):
    """Each rank ends validation with its own numbers; the logged metrics and the checkpoints'
    ``si_snri`` are the global means, and the checkpoints kept (2, by ``si_snri``) are the
    global best, written once, by the main process. (Without the barrier in
    ``sepid.training.checkpoints.AtomicCheckpointer.save_checkpoint`` the third save could hang here: the
    ranks pruned different lists.)"""
    import yaml

    run, runs = joint_ranks
    rank0, rank1 = runs[0]
    assert rank0["lr"] == rank1["lr"]  # every rank applies the same schedule
    log = (run / "train_log.txt").read_text().strip().splitlines()
    assert len(log) == 3  # once per epoch, not once per rank
    for line, si_snri, loss in zip(log, (-1.0, 2.5, 1.5), (2.0, 3.0, 4.0), strict=True):
        logged = dict(re.findall(r"valid (\w+): ([-+.e0-9]+)", line))
        assert float(logged["si_snri"]) == si_snri and float(logged["loss"]) == loss, line
        assert float(logged["speaker_accuracy"]) == 0.5  # rank 0 all right, rank 1 all wrong
    kept = sorted((run / "save").glob("CKPT+*"))
    metas = sorted(yaml.safe_load((c / "CKPT.yaml").read_text())["si_snri"] for c in kept)
    assert metas == [1.5, 2.5]  # rank 0's own numbers would have kept epochs 1 and 3
    assert not list((run / "save").glob("*INCOMPLETE*"))


def record_ranks(out, argv):
    """Run by each torchrun process: joins the group and builds the datasets and the JointBrain
    as ``recipes/joint/train.py`` does, then

    - iterates two training epochs through the loader SpeechBrain makes for the recipe's
      ``train_dataloader_opts`` (its DistributedSampler under DDP), in the order of
      ``Brain._fit_train`` (``on_stage_start``, then the sampler's ``set_epoch``), recording
      each mixture (id, utterances, a hash of the mixture signal); and every item of each epoch
      as the dataset draws it (what one process iterates);
    - ends three validation stages with this rank's numbers (:data:`RANK_SI_SNRI`) through the
      recipe's ``on_stage_end``, which logs, schedules and checkpoints.

    Writes ``out/rank<r>.json``."""
    import torch
    from speechbrain import Stage

    from sepid.data.mixtures import mixture_collate
    from sepid.training.experiment import start_experiment
    from tests.recipes.test_joint_recipe import build_joint_brain

    _, run_opts, _, hparams = start_experiment(argv)
    brain, train_set = build_joint_brain(hparams, run_opts)
    brain.train_set = train_set
    loader = brain.make_dataloader(
        train_set,
        Stage.TRAIN,
        **{**hparams["train_dataloader_opts"], "collate_fn": mixture_collate},
    )
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    record = {"rank": rank, "sampled": {}, "epoch": {}}
    for epoch in (1, 2):
        brain.on_stage_start(Stage.TRAIN, epoch)
        if brain.train_sampler is not None:
            brain.train_sampler.set_epoch(epoch)
        record["sampled"][epoch] = [
            mixture_record(batch, j) for batch in loader for j in range(len(batch.id))
        ]
        record["epoch"][epoch] = [
            mixture_record(mixture_collate([train_set[i]]), 0) for i in range(len(train_set))
        ]
    brain.on_fit_start()  # the optimizer, as fit() makes it
    brain.train_stats = {"loss": 0.0}
    record["lr"] = []
    for epoch, (values, loss) in enumerate(
        zip(RANK_SI_SNRI[rank], RANK_LOSS[rank], strict=True), start=1
    ):
        brain.on_stage_start(Stage.VALID, epoch)
        brain.si_snri, brain.correct = list(values), [rank == 0] * len(values)
        brain.on_stage_end(Stage.VALID, loss, epoch)
        record["lr"].append(brain.optimizer.param_groups[0]["lr"])
    (out / f"rank{rank}.json").write_text(json.dumps(record))


def mixture_record(batch, j):
    """Item ``j`` of a mixture batch: id, speakers' utterances, SHA-1 of its unpadded mixture."""
    import hashlib

    mix, lengths = batch.mix_sig
    n = int(round(float(lengths[j]) * mix.shape[1]))
    digest = hashlib.sha1(mix[j, :n].numpy().tobytes()).hexdigest()
    return [batch.id[j], batch.s1_utt[j], batch.s2_utt[j], digest]


if __name__ == "__main__":
    import sys
    from pathlib import Path

    record_ranks(Path(sys.argv[1]), sys.argv[2:])

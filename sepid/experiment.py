"""The standard start of every recipe script, in one place."""

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml


def start_experiment(argv):
    """SpeechBrain's recipe start: parse ``hparams.yaml --key=value ...``, join the DDP group
    when launched by ``torchrun`` (SpeechBrain refuses to start under torchrun without it), load
    the YAML with the overrides and create the experiment folder (with a copy of the resolved
    YAML, so every result can be traced to its configuration).

    Returns
    -------
    hparams_file, run_opts, overrides, hparams
    """
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    sb.utils.distributed.ddp_init_group(run_opts)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    return hparams_file, run_opts, overrides, hparams

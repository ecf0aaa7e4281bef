"""Tiny randomly initialised models for tests and the offline demo.

No model hub is reachable from CI or the demo machine, so these build a small model from a config,
save it with ``save_pretrained`` and let callers load it through the same ``from_pretrained`` /
``from_hparams`` path that the real ``microsoft/wavlm-base-plus`` takes.
"""

import shutil
import tempfile
from pathlib import Path

import torch
from speechbrain.utils.distributed import run_on_main
from transformers import WavLMConfig, WavLMModel

TINY_WAVLM = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=(32, 32, 32, 32, 32, 32, 32),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
    num_buckets=32,
    max_bucket_distance=100,
    feat_extract_norm="group",
    do_stable_layer_norm=False,
)


def _build_once(folder, write, marker):
    """Runs ``write(tmp_folder)`` and renames the result to ``folder``, unless ``folder`` already
    holds a model (its ``marker`` file): an interrupted build leaves no half-written model that a
    rerun would trust. The caller's random generators are left as they were."""
    folder = Path(folder)
    # Under torchrun only the main process builds (Hugging Face's save_pretrained writes the
    # weights from the main process alone); the others wait for it.
    run_on_main(_build, args=(folder, write, marker))
    return folder


def _build(folder, write, marker):
    if (folder / marker).is_file():
        return
    if folder.is_dir() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} exists and holds no model ({marker}); remove it first.")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    with torch.random.fork_rng():
        write(tmp)
    try:
        tmp.rename(folder)  # onto an absent or empty folder
    except OSError:  # built meanwhile by another process: keep theirs
        shutil.rmtree(tmp)
        if not (folder / marker).is_file():
            raise


def save_tiny_wavlm(folder, seed=0, **overrides):
    """Writes a tiny random WavLM (same architecture as WavLM Base+, fewer and narrower layers,
    the same 320x frame rate) to ``folder`` unless it is already there; returns the folder."""

    def write(tmp):
        torch.manual_seed(seed)
        WavLMModel(WavLMConfig(**{**TINY_WAVLM, **overrides})).save_pretrained(tmp)

    return _build_once(folder, write, "config.json")


# The structure of speechbrain/sepformer-whamr's hyperparams.yaml, with tiny sizes.
TINY_SEPFORMER_YAML = """\
sample_rate: {sample_rate}
num_spks: 2
N_encoder_out: {channels}
kernel_size: 16
kernel_stride: 8

Encoder: !new:speechbrain.lobes.models.dual_path.Encoder
    kernel_size: !ref <kernel_size>
    out_channels: !ref <N_encoder_out>

SBtfintra: !new:speechbrain.lobes.models.dual_path.SBTransformerBlock
    num_layers: {layers}
    d_model: !ref <N_encoder_out>
    nhead: {nhead}
    d_ffn: {ffn}
    dropout: 0
    use_positional_encoding: True
    norm_before: True

SBtfinter: !new:speechbrain.lobes.models.dual_path.SBTransformerBlock
    num_layers: {layers}
    d_model: !ref <N_encoder_out>
    nhead: {nhead}
    d_ffn: {ffn}
    dropout: 0
    use_positional_encoding: True
    norm_before: True

MaskNet: !new:speechbrain.lobes.models.dual_path.Dual_Path_Model
    num_spks: !ref <num_spks>
    in_channels: !ref <N_encoder_out>
    out_channels: !ref <N_encoder_out>
    num_layers: {blocks}
    K: {chunk}
    intra_model: !ref <SBtfintra>
    inter_model: !ref <SBtfinter>
    norm: ln
    linear_layer_after_inter_intra: False
    skip_around_intra: True

Decoder: !new:speechbrain.lobes.models.dual_path.Decoder
    in_channels: !ref <N_encoder_out>
    out_channels: 1
    kernel_size: !ref <kernel_size>
    stride: !ref <kernel_stride>
    bias: False

modules:
    encoder: !ref <Encoder>
    decoder: !ref <Decoder>
    masknet: !ref <MaskNet>

pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        encoder: !ref <Encoder>
        masknet: !ref <MaskNet>
        decoder: !ref <Decoder>
"""


TINY_SEPFORMER = dict(channels=16, ffn=32, layers=1, nhead=2, blocks=1, chunk=50)
# speechbrain/sepformer-whamr's sizes (26 M parameters), for timing the real architecture.
SEPFORMER_WHAMR_SIZE = dict(channels=256, ffn=1024, layers=8, nhead=8, blocks=2, chunk=250)


def save_tiny_sepformer(folder, sample_rate=8000, seed=0, **sizes):
    """Writes a random SepFormer in the layout of ``speechbrain/sepformer-whamr``
    (``hyperparams.yaml`` + ``encoder.ckpt``, ``masknet.ckpt``, ``decoder.ckpt``) to ``folder``
    unless it is there; ``SepformerSeparation.from_hparams(source=folder)`` loads it. Tiny by
    default; ``**SEPFORMER_WHAMR_SIZE`` gives the real model's sizes."""
    from hyperpyyaml import load_hyperpyyaml

    text = TINY_SEPFORMER_YAML.format(sample_rate=sample_rate, **{**TINY_SEPFORMER, **sizes})

    def write(tmp):
        torch.manual_seed(seed)
        hparams = load_hyperpyyaml(text)
        for name, module in hparams["modules"].items():
            torch.save(module.state_dict(), tmp / f"{name}.ckpt")
        (tmp / "hyperparams.yaml").write_text(text)

    return _build_once(folder, write, "hyperparams.yaml")


# The structure of speechbrain/spkrec-ecapa-voxceleb's hyperparams.yaml (80 log-mel filterbanks,
# sentence mean normalisation, ECAPA-TDNN, cosine classifier, a Pretrainer reading
# embedding_model.ckpt, mean_var_norm_emb.ckpt, classifier.ckpt and label_encoder.txt from
# pretrained_path), with tiny sizes. That model's pretrained_path is its Hub id; here it is the
# folder the files are in, so it loads offline.
TINY_ECAPA_YAML = """\
n_mels: 80
pretrained_path: {folder}
out_n_neurons: {n_classes}

compute_features: !new:speechbrain.lobes.features.Fbank
    n_mels: !ref <n_mels>

mean_var_norm: !new:speechbrain.processing.features.InputNormalization
    norm_type: sentence
    std_norm: False

embedding_model: !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN
    input_size: !ref <n_mels>
    channels: {channels}
    kernel_sizes: [5, 3, 3, 3, 1]
    dilations: [1, 2, 3, 4, 1]
    attention_channels: {attention_channels}
    lin_neurons: {lin_neurons}

classifier: !new:speechbrain.lobes.models.ECAPA_TDNN.Classifier
    input_size: {lin_neurons}
    out_neurons: !ref <out_n_neurons>

mean_var_norm_emb: !new:speechbrain.processing.features.InputNormalization
    norm_type: global
    std_norm: False

modules:
    compute_features: !ref <compute_features>
    mean_var_norm: !ref <mean_var_norm>
    embedding_model: !ref <embedding_model>
    mean_var_norm_emb: !ref <mean_var_norm_emb>
    classifier: !ref <classifier>

label_encoder: !new:speechbrain.dataio.encoder.CategoricalEncoder

pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        embedding_model: !ref <embedding_model>
        mean_var_norm_emb: !ref <mean_var_norm_emb>
        classifier: !ref <classifier>
        label_encoder: !ref <label_encoder>
    paths:
        embedding_model: !ref <pretrained_path>/embedding_model.ckpt
        mean_var_norm_emb: !ref <pretrained_path>/mean_var_norm_emb.ckpt
        classifier: !ref <pretrained_path>/classifier.ckpt
        label_encoder: !ref <pretrained_path>/label_encoder.txt
"""

TINY_ECAPA = dict(channels=[16, 16, 16, 16, 48], attention_channels=8, lin_neurons=16, n_classes=4)


def save_tiny_ecapa(folder, seed=0, **sizes):
    """Writes a random ECAPA-TDNN in the layout of ``speechbrain/spkrec-ecapa-voxceleb``
    (``hyperparams.yaml`` + ``embedding_model.ckpt``, ``mean_var_norm_emb.ckpt``,
    ``classifier.ckpt``, ``label_encoder.txt``) to ``folder`` unless it is there;
    ``EncoderClassifier.from_hparams(source=folder)`` loads it. A stand-in for the stock model in
    tests of the evaluation's baseline (the real one is a download)."""
    from hyperpyyaml import load_hyperpyyaml

    folder = Path(folder).resolve()
    text = TINY_ECAPA_YAML.format(folder=folder, **{**TINY_ECAPA, **sizes})

    def write(tmp):
        torch.manual_seed(seed)
        hparams = load_hyperpyyaml(text)
        for name in ("embedding_model", "classifier"):
            torch.save(hparams[name].state_dict(), tmp / f"{name}.ckpt")
        hparams["mean_var_norm_emb"]._save(tmp / "mean_var_norm_emb.ckpt")  # its own format
        encoder = hparams["label_encoder"]
        encoder.update_from_iterable([f"spk{i}" for i in range(hparams["out_n_neurons"])])
        encoder.save(tmp / "label_encoder.txt")
        (tmp / "hyperparams.yaml").write_text(text)

    return _build_once(folder, write, "hyperparams.yaml")


def _read_config(path):
    """The plain YAML mapping in ``path`` (model sizes), or {} for None."""
    if path is None:
        return {}
    from ruamel.yaml import YAML

    with open(path, encoding="utf-8") as fin:
        config = YAML(typ="safe", pure=True).load(fin) or {}
    if not isinstance(config, dict):
        raise ValueError(f"{path} must hold a mapping of model sizes (key: value), not {config!r}")
    return config


def build_tiny_wavlm(out, config=None, seed=0):
    """``save_tiny_wavlm`` with the ``WavLMConfig`` values of the YAML file ``config`` (over
    :data:`TINY_WAVLM`); raises ``FileExistsError`` when ``out`` holds a model of other sizes
    (remove it to rebuild). Returns the folder."""
    sizes = _read_config(config)
    folder = save_tiny_wavlm(out, seed=seed, **sizes)
    built = WavLMConfig.from_pretrained(folder).to_dict()
    wanted = WavLMConfig(**{**TINY_WAVLM, **sizes}).to_dict()
    differ = sorted(k for k in {**TINY_WAVLM, **sizes} if built.get(k) != wanted.get(k))
    if differ:
        raise FileExistsError(
            f"{folder} holds a tiny WavLM whose {', '.join(differ)} differ from {config}; remove "
            "the folder to rebuild it."
        )
    return folder


def main(argv=None):
    """``python -m sepid.tiny wavlm --out DIR [--config sizes.yaml] [--seed N]``: builds and saves
    a tiny random model (once; a rerun with the same sizes keeps it) for a recipe to load through
    its ordinary ``wavlm_source`` (or ``separator_source`` for ``sepformer``)."""
    import argparse
    import logging

    parser = argparse.ArgumentParser(description=main.__doc__.split("\n")[0])
    parser.add_argument("model", choices=["wavlm", "sepformer"])
    parser.add_argument("--out", required=True, help="folder the model is saved to")
    parser.add_argument("--config", default=None, help="YAML mapping of sizes (over the defaults)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.model == "wavlm":
        folder = build_tiny_wavlm(args.out, config=args.config, seed=args.seed)
        n_params = sum(p.numel() for p in WavLMModel.from_pretrained(folder).parameters())
        logging.getLogger(__name__).info("Tiny WavLM (%d parameters) in %s", n_params, folder)
    else:
        folder = save_tiny_sepformer(args.out, seed=args.seed, **_read_config(args.config))
        logging.getLogger(__name__).info("Tiny SepFormer in %s", folder)


if __name__ == "__main__":
    main()

"""Zipformer transducers: hyper-parameters in icefall's names, presets, building, loading icefall checkpoints.

``params`` (dict, AttributeDict or argparse namespace) uses icefall's
``zipformer/train.py`` flag names; per-stack values are comma strings
(``"2,2,3,4,3,2"``), ints or lists. Missing (or None) keys take icefall's
defaults (its medium model); keys this module does not use are ignored.

The built :class:`~icefall_spkd.models.transducer.Transducer` has icefall's
``AsrModel`` module names -- ``encoder_embed``, ``encoder``, ``decoder``,
``joiner``, ``simple_am_proj``, ``simple_lm_proj`` and, with ``use_ctc``,
``ctc_output`` -- so :func:`from_icefall` loads an icefall state_dict strictly.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any, Dict, Optional, Union

import torch
from torch import nn

from icefall_spkd.utils import param_value

from .icefall_decoder import IcefallDecoder
from .joiner import Joiner
from .presets_aishell import AISHELL_VOCAB_SIZE, AISHELL_ZIPFORMER_PRESETS
from .scaling import ScheduledFloat, scaled_linear, to_int_tuple
from .subsampling import Conv2dSubsampling
from .transducer import Transducer
from .zipformer import Zipformer2

# icefall egs/librispeech/ASR/zipformer/train.py defaults (the "medium" model).
ZIPFORMER_DEFAULTS: Dict[str, Any] = dict(
    num_encoder_layers="2,2,3,4,3,2",
    downsampling_factor="1,2,4,8,4,2",
    feedforward_dim="512,768,1024,1536,1024,768",
    num_heads="4,4,4,8,4,4",
    encoder_dim="192,256,384,512,384,256",
    query_head_dim="32",
    value_head_dim="12",
    pos_head_dim="4",
    pos_dim=48,
    encoder_unmasked_dim="192,192,256,256,256,192",
    cnn_module_kernel="31,31,15,15,15,31",
    decoder_dim=512,
    joiner_dim=512,
    context_size=2,
    vocab_size=500,
    feature_dim=80,
    causal=False,
    chunk_size="16,32,64,-1",
    left_context_frames="64,128,256,-1",
    use_ctc=False,
    blank_id=0,
)

PER_STACK_KEYS = (
    "num_encoder_layers", "downsampling_factor", "feedforward_dim", "num_heads", "encoder_dim",
    "query_head_dim", "value_head_dim", "pos_head_dim", "encoder_unmasked_dim", "cnn_module_kernel",
)

ZIPFORMER_PRESETS: Dict[str, Dict[str, Any]] = {
    # icefall's published LibriSpeech configurations (RESULTS.md, zipformer).
    "zipformer-small": dict(
        num_encoder_layers="2,2,2,2,2,2",
        feedforward_dim="512,768,768,768,768,768",
        encoder_dim="192,256,256,256,256,256",
        encoder_unmasked_dim="192,192,192,192,192,192",
    ),
    "zipformer-medium": dict(),
    "zipformer-large": dict(
        num_encoder_layers="2,2,4,5,4,2",
        feedforward_dim="512,768,1536,2048,1536,768",
        encoder_dim="192,256,512,768,512,256",
        encoder_unmasked_dim="192,192,256,320,256,192",
    ),
    # The SP-KD authors' student (5 stacks at 1,2,4,8,2 in their Zipformer1
    # fork: layers 1,1,1,1,1, ff 256,256,512,512,256, 4 heads, dim 196) mapped to
    # Zipformer2's six stacks 1,2,4,8,4,2: stacks 1-4 are theirs, the 6th
    # (factor 2) is their 5th, and the inserted 5th (factor 4) gets the smaller
    # ff 256 so the total stays near their 6 M at BPE 500.
    "zipformer-paper-student": dict(
        num_encoder_layers="1,1,1,1,1,1",
        feedforward_dim="256,256,512,512,256,256",
        num_heads="4",
        encoder_dim="196",
        encoder_unmasked_dim="196",
        decoder_dim=256,
        joiner_dim=256,
    ),
    # Sized for the synthetic corpus (BPE 50): a ~5 M teacher, a student < 1/6 of it.
    "zipformer-synth-teacher": dict(
        num_encoder_layers="2,2,2,2,2,2",
        feedforward_dim="256,256,384,384,384,256",
        num_heads="4",
        encoder_dim="96,96,128,128,128,96",
        encoder_unmasked_dim="96",
        decoder_dim=192,
        joiner_dim=192,
    ),
    "zipformer-synth-student": dict(
        num_encoder_layers="1,1,1,1,1,1",
        feedforward_dim="96,128,128,128,128,128",
        num_heads="2",
        query_head_dim="16",
        encoder_dim="48,48,64,64,64,48",
        encoder_unmasked_dim="48",
        pos_dim=16,
        decoder_dim=64,
        joiner_dim=64,
    ),
}
# The SP-KD authors' AISHELL-1 teacher and student (character vocabulary; presets_aishell.py).
ZIPFORMER_PRESETS.update(AISHELL_ZIPFORMER_PRESETS)

ParamsLike = Union[str, Mapping, argparse.Namespace]


def resolve_zipformer_config(params: ParamsLike) -> Dict[str, Any]:
    """The complete hyper-parameter dict (icefall names, per-stack values as comma strings).

    Order: icefall's defaults, then the ``model_preset`` (if it names a
    Zipformer preset), then every non-None key of ``params``.
    """
    if isinstance(params, str):
        params = {"model_preset": params}
    cfg: Dict[str, Any] = dict(ZIPFORMER_DEFAULTS)
    preset = param_value(params, "model_preset")
    if preset is not None and str(preset).startswith("zipformer"):
        if preset not in ZIPFORMER_PRESETS:
            raise ValueError(f"unknown Zipformer preset {preset!r}; choose from {sorted(ZIPFORMER_PRESETS)}")
        cfg.update(ZIPFORMER_PRESETS[preset])
        cfg["model_preset"] = preset
    for key in ZIPFORMER_DEFAULTS:
        v = param_value(params, key)
        if v is not None:
            cfg[key] = v
    n = len(to_int_tuple(cfg["downsampling_factor"]))
    for key in PER_STACK_KEYS:
        try:
            cfg[key] = ",".join(str(v) for v in to_int_tuple(cfg[key], n))
        except ValueError as e:
            raise ValueError(f"--{key.replace('_', '-')}: {e} (one per stack, {n} stacks)") from None
    for key in ("chunk_size", "left_context_frames"):
        cfg[key] = ",".join(str(v) for v in to_int_tuple(cfg[key]))
    for key in ("pos_dim", "decoder_dim", "joiner_dim", "context_size", "vocab_size",
                "feature_dim", "blank_id"):
        cfg[key] = int(cfg[key])
    for key in ("causal", "use_ctc"):
        v = cfg[key]
        cfg[key] = v if isinstance(v, bool) else str(v).lower() in ("1", "true", "yes")
    cfg["encoder_type"] = "zipformer"
    return cfg


def build_zipformer_model(params: ParamsLike) -> Transducer:
    """Build a Zipformer transducer (icefall's ``AsrModel`` layout; see the module docstring).

    Returns the model with ``model.model_config`` = :func:`resolve_zipformer_config`'s dict.
    """
    cfg = resolve_zipformer_config(params)
    dims = to_int_tuple(cfg["encoder_dim"])
    encoder_embed = Conv2dSubsampling(
        in_channels=cfg["feature_dim"], out_channels=dims[0],
        dropout=ScheduledFloat((0.0, 0.3), (20000.0, 0.1)),
    )
    encoder = Zipformer2(
        output_downsampling_factor=2,
        downsampling_factor=to_int_tuple(cfg["downsampling_factor"]),
        num_encoder_layers=to_int_tuple(cfg["num_encoder_layers"]),
        encoder_dim=dims,
        encoder_unmasked_dim=to_int_tuple(cfg["encoder_unmasked_dim"]),
        query_head_dim=to_int_tuple(cfg["query_head_dim"]),
        pos_head_dim=to_int_tuple(cfg["pos_head_dim"]),
        value_head_dim=to_int_tuple(cfg["value_head_dim"]),
        pos_dim=cfg["pos_dim"],
        num_heads=to_int_tuple(cfg["num_heads"]),
        feedforward_dim=to_int_tuple(cfg["feedforward_dim"]),
        cnn_module_kernel=to_int_tuple(cfg["cnn_module_kernel"]),
        dropout=ScheduledFloat((0.0, 0.3), (20000.0, 0.1)),
        warmup_batches=4000.0,
        causal=cfg["causal"],
        chunk_size=to_int_tuple(cfg["chunk_size"]),
        left_context_frames=to_int_tuple(cfg["left_context_frames"]),
    )
    out_dim = encoder.output_dim
    decoder = IcefallDecoder(cfg["vocab_size"], cfg["decoder_dim"], cfg["blank_id"], cfg["context_size"])
    joiner = Joiner(out_dim, cfg["decoder_dim"], cfg["joiner_dim"], cfg["vocab_size"])
    # icefall initialises these projections as ScaledLinear(initial_scale=0.25).
    joiner.encoder_proj = scaled_linear(out_dim, cfg["joiner_dim"], initial_scale=0.25)
    joiner.decoder_proj = scaled_linear(cfg["decoder_dim"], cfg["joiner_dim"], initial_scale=0.25)
    model = Transducer(
        encoder=encoder, decoder=decoder, joiner=joiner, encoder_dim=out_dim,
        decoder_dim=cfg["decoder_dim"], vocab_size=cfg["vocab_size"],
        encoder_embed=encoder_embed, use_ctc=cfg["use_ctc"],
    )
    model.simple_am_proj = scaled_linear(out_dim, cfg["vocab_size"], initial_scale=0.25)
    model.simple_lm_proj = scaled_linear(cfg["decoder_dim"], cfg["vocab_size"], initial_scale=0.25)
    model.model_config = cfg
    return model


class IcefallLoadError(RuntimeError):
    """An icefall state_dict does not match the model built from the given hyper-parameters."""


def from_icefall(state_dict: Mapping[str, torch.Tensor], params: ParamsLike) -> Transducer:
    """Build a Zipformer transducer from ``params`` and load an icefall ``state_dict`` strictly.

    ``state_dict`` may also be a whole icefall checkpoint (its ``"model"``
    entry is used). ``use_ctc`` is switched on when the state_dict has
    ``ctc_output.*`` and ``params`` does not say otherwise.

    Raises:
      IcefallLoadError: listing the missing and unexpected keys (and shape
        mismatches), when the state_dict does not fit the architecture.
    """
    if "model" in state_dict and isinstance(state_dict["model"], Mapping):
        state_dict = state_dict["model"]
    state_dict = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}
    if isinstance(params, str):
        params = {"model_preset": params}
    if param_value(params, "use_ctc") is None and any(k.startswith("ctc_output.") for k in state_dict):
        params = {**(dict(params) if isinstance(params, Mapping) else vars(params)), "use_ctc": True}
    model = build_zipformer_model(params)
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state_dict)
        if tuple(state_dict[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or shapes:
        def show(items: list) -> str:
            return ", ".join(items[:20]) + (f" ... (+{len(items) - 20} more)" if len(items) > 20 else "")

        raise IcefallLoadError(
            "icefall state_dict does not match the Zipformer built from the given "
            f"hyper-parameters: {len(missing)} missing keys [{show(missing)}], "
            f"{len(unexpected)} unexpected keys [{show(unexpected)}], "
            f"{len(shapes)} shape mismatches [{show(shapes)}]. "
            "Pass the checkpoint's own flags (--num-encoder-layers, --encoder-dim, ...)."
        )
    model.load_state_dict(state_dict, strict=True)
    return model


def num_parameters(model: nn.Module) -> int:
    """Total number of parameters."""
    return sum(p.numel() for p in model.parameters())


def zipformer_preset_table(vocab_size: Optional[int] = None) -> list:
    """``[(preset, vocab_size, parameters)]``; BPE 50 for the synth presets, AISHELL's 4,336
    characters for the aishell ones, else 500 (or ``vocab_size``)."""
    rows = []
    for name in ZIPFORMER_PRESETS:
        v = vocab_size or (50 if "synth" in name else AISHELL_VOCAB_SIZE if "aishell" in name else 500)
        with torch.device("meta"):
            model = build_zipformer_model({"model_preset": name, "vocab_size": v})
        rows.append((name, v, num_parameters(model)))
    return rows

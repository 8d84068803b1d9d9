"""Named model sizes and the one function that builds a :class:`Transducer`.

Presets (parameter counts measured at ``vocab_size=500``, ``feature_dim=80``,
``context_size=2``; re-print with
``python -c "from icefall_spkd.models.presets import preset_table; print(preset_table())"``):

========  ===========  ======  =====  ======  ======  ======  ======  ===========
preset    encoder_dim  layers  heads  ff_dim  kernel  dec     joiner  parameters
========  ===========  ======  =====  ======  ======  ======  ======  ===========
tiny      96           4       4      320     15      96      96      1.03 M
small     144          12      4      512     31      256     256     6.06 M
medium    256          12      4      1024    31      512     512     19.92 M
large     512          12      8      1792    31      512     512     69.38 M
========  ===========  ======  =====  ======  ======  ======  ======  ===========

``small`` is the paper's student size (~6 M) and ``large`` its teacher (~70 M).

Zipformer presets (``--encoder-type zipformer`` or a ``zipformer-*`` preset
name; see :mod:`icefall_spkd.models.zipformer_build`, icefall's flag names):
``zipformer-small`` / ``-medium`` / ``-large`` (icefall's published
LibriSpeech configurations), ``zipformer-paper-student`` (the SP-KD authors'
student mapped to six stacks), ``zipformer-synth-teacher`` /
``zipformer-synth-student`` (sized for the synthetic corpus, BPE 50). Print
every preset's parameter count with ``python -m icefall_spkd.models.presets``.

Usage::

    parser = argparse.ArgumentParser(); add_model_arguments(parser)
    params.update(vars(parser.parse_args()))
    model = build_model(params)          # or build_model("small")

Explicit dimensions override the preset; without a preset every dimension of
:data:`DIM_KEYS` must be given.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Optional, Union

from icefall_spkd.utils import param_value, str2bool

from .conformer import Conformer
from .decoder import Decoder
from .joiner import Joiner
from .transducer import Transducer
from .zipformer_build import ZIPFORMER_PRESETS, build_zipformer_model, zipformer_preset_table

DIM_KEYS = (
    "encoder_dim",
    "num_encoder_layers",
    "num_heads",
    "feedforward_dim",
    "cnn_module_kernel",
    "decoder_dim",
    "joiner_dim",
)

PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(
        encoder_dim=96,
        num_encoder_layers=4,
        num_heads=4,
        feedforward_dim=320,
        cnn_module_kernel=15,
        decoder_dim=96,
        joiner_dim=96,
    ),
    "small": dict(
        encoder_dim=144,
        num_encoder_layers=12,
        num_heads=4,
        feedforward_dim=512,
        cnn_module_kernel=31,
        decoder_dim=256,
        joiner_dim=256,
    ),
    "medium": dict(
        encoder_dim=256,
        num_encoder_layers=12,
        num_heads=4,
        feedforward_dim=1024,
        cnn_module_kernel=31,
        decoder_dim=512,
        joiner_dim=512,
    ),
    "large": dict(
        encoder_dim=512,
        num_encoder_layers=12,
        num_heads=8,
        feedforward_dim=1792,
        cnn_module_kernel=31,
        decoder_dim=512,
        joiner_dim=512,
    ),
}


@dataclass
class ModelConfig:
    """Every hyper-parameter :func:`build_model` uses."""

    encoder_dim: int
    num_encoder_layers: int
    num_heads: int
    feedforward_dim: int
    cnn_module_kernel: int
    decoder_dim: int
    joiner_dim: int
    vocab_size: int = 500
    context_size: int = 2
    feature_dim: int = 80
    dropout: float = 0.1
    blank_id: int = 0
    subsampling_channels: Optional[int] = None  # None: max(8, encoder_dim // 4)


ParamsLike = Union[str, Mapping, argparse.Namespace, ModelConfig]


def _as_int(key: str, value: Any) -> int:
    """A Conformer dimension: an int (a string flag value is converted)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"--{key.replace('_', '-')} {value!r}: the Conformer takes one integer "
            "(comma lists are for --encoder-type zipformer)"
        ) from None


def encoder_type_of(params: ParamsLike) -> str:
    """``"zipformer"`` or ``"conformer"``: ``encoder_type`` if given, else from the preset name."""
    if isinstance(params, str):
        params = {"model_preset": params}
    if isinstance(params, ModelConfig):
        return "conformer"
    enc = param_value(params, "encoder_type")
    preset = param_value(params, "model_preset")
    if enc is None:
        return "zipformer" if str(preset or "").startswith("zipformer") else "conformer"
    if enc not in ("conformer", "zipformer"):
        raise ValueError(f"encoder_type must be 'conformer' or 'zipformer', got {enc!r}")
    if enc == "conformer" and str(preset or "").startswith("zipformer"):
        raise ValueError(f"model preset {preset!r} is a Zipformer but encoder_type is 'conformer'")
    return enc


def resolve_model_config(params: ParamsLike) -> ModelConfig:
    """Turn a preset name, a params dict/AttributeDict/Namespace or a config into a :class:`ModelConfig`.

    ``model_preset`` (if set) gives the base dimensions; every key of
    :class:`ModelConfig` present in ``params`` with a non-None value overrides it.
    """
    if isinstance(params, ModelConfig):
        return params
    if isinstance(params, str):
        params = {"model_preset": params}
    values: dict[str, Any] = {}
    preset = param_value(params, "model_preset")
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown model preset {preset!r}; choose from {sorted(PRESETS)}")
        values.update(PRESETS[preset])
    for f in fields(ModelConfig):
        v = param_value(params, f.name)
        if v is not None:
            values[f.name] = _as_int(f.name, v) if f.name in DIM_KEYS else v
    missing = [k for k in DIM_KEYS if k not in values]
    if missing:
        raise ValueError(
            f"no model_preset and missing model dimensions {missing}; "
            f"give --model-preset ({'/'.join(PRESETS)}) or all of {list(DIM_KEYS)}"
        )
    return ModelConfig(**values)


def build_model(params: ParamsLike) -> Transducer:
    """Build a :class:`Transducer` (Conformer encoder, stateless decoder, joiner).

    Args:
      params: a preset name (``"tiny"``, ``"small"``, ``"medium"``, ``"large"``),
        or a mapping / namespace with ``model_preset`` and/or the explicit
        dimensions (``encoder_dim``, ``num_encoder_layers``, ``num_heads``,
        ``feedforward_dim``, ``cnn_module_kernel``, ``decoder_dim``,
        ``joiner_dim``) and optionally ``vocab_size`` (500), ``context_size``
        (2), ``feature_dim`` (80), ``dropout`` (0.1), ``blank_id`` (0).
    Returns:
      The model; ``model.model_config`` holds the resolved config as a dict.

    With ``encoder_type == "zipformer"`` (or a ``zipformer-*`` preset) it builds
    icefall's Zipformer2 transducer instead, from icefall's flag names
    (:func:`icefall_spkd.models.zipformer_build.build_zipformer_model`; a
    Conformer preset name is then ignored and icefall's defaults fill gaps).
    """
    if encoder_type_of(params) == "zipformer":
        return build_zipformer_model(params)
    cfg = resolve_model_config(params)
    encoder = Conformer(
        num_features=cfg.feature_dim,
        d_model=cfg.encoder_dim,
        num_heads=cfg.num_heads,
        feedforward_dim=cfg.feedforward_dim,
        num_layers=cfg.num_encoder_layers,
        cnn_module_kernel=cfg.cnn_module_kernel,
        dropout=cfg.dropout,
        subsampling_channels=cfg.subsampling_channels,
    )
    decoder = Decoder(
        vocab_size=cfg.vocab_size,
        decoder_dim=cfg.decoder_dim,
        blank_id=cfg.blank_id,
        context_size=cfg.context_size,
    )
    joiner = Joiner(cfg.encoder_dim, cfg.decoder_dim, cfg.joiner_dim, cfg.vocab_size)
    model = Transducer(
        encoder=encoder,
        decoder=decoder,
        joiner=joiner,
        encoder_dim=cfg.encoder_dim,
        decoder_dim=cfg.decoder_dim,
        vocab_size=cfg.vocab_size,
        use_ctc=str2bool(param_value(params, "use_ctc") or False),
    )
    # Everything build_model needs to rebuild it (stored in every checkpoint).
    model.model_config = {**asdict(cfg), "encoder_type": "conformer", "use_ctc": model.ctc_output is not None}
    return model


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--model-preset`` and the dimension flags; explicit flags override the preset.

    Dimension flags default to None (= take the preset's value). ``--vocab-size``
    is not added here: recipes take it from ``tokens.txt`` / ``bpe.model``.
    """
    parser.add_argument(
        "--encoder-type",
        type=str,
        default=None,
        choices=["conformer", "zipformer"],
        help="Encoder family; default: from --model-preset (zipformer-* presets are Zipformers), "
        "else conformer.",
    )
    parser.add_argument(
        "--model-preset",
        type=str,
        default="small",
        choices=sorted(PRESETS) + sorted(ZIPFORMER_PRESETS),
        help="Named model size; explicit dimension flags override its values. Conformer "
        "presets are ignored by --encoder-type zipformer.",
    )
    per_stack = " (Zipformer: comma list, one per stack, e.g. 2,2,3,4,3,2)"
    parser.add_argument("--encoder-dim", type=str, default=None, help="Conformer d_model" + per_stack)
    parser.add_argument(
        "--num-encoder-layers", type=str, default=None, help="Number of Conformer blocks" + per_stack
    )
    parser.add_argument("--num-heads", type=str, default=None, help="Attention heads" + per_stack)
    parser.add_argument(
        "--feedforward-dim", type=str, default=None, help="Feed-forward hidden size" + per_stack
    )
    parser.add_argument(
        "--cnn-module-kernel", type=str, default=None, help="Odd depthwise conv kernel size" + per_stack
    )
    zf = "Zipformer only (icefall's flag): "
    parser.add_argument("--downsampling-factor", type=str, default=None,
                        help=zf + "per-stack frame-rate reduction (default 1,2,4,8,4,2).")
    parser.add_argument("--encoder-unmasked-dim", type=str, default=None,
                        help=zf + "per-stack dims never masked by training feature masks.")
    parser.add_argument("--query-head-dim", type=str, default=None, help=zf + "query/key dim per head (32).")
    parser.add_argument("--value-head-dim", type=str, default=None, help=zf + "value dim per head (12).")
    parser.add_argument("--pos-head-dim", type=str, default=None, help=zf + "position query dim per head (4).")
    parser.add_argument("--pos-dim", type=int, default=None, help=zf + "positional-encoding dim (48).")
    parser.add_argument("--causal", type=str2bool, default=None, help=zf + "chunked causal model (false).")
    parser.add_argument("--chunk-size", type=str, default=None,
                        help=zf + "chunk sizes drawn in training, 50 Hz frames (16,32,64,-1).")
    parser.add_argument("--left-context-frames", type=str, default=None,
                        help=zf + "left contexts drawn in training (64,128,256,-1).")
    parser.add_argument("--decoder-dim", type=int, default=None, help="Decoder embedding dim.")
    parser.add_argument("--joiner-dim", type=int, default=None, help="Joiner hidden dim.")
    parser.add_argument(
        "--context-size", type=int, default=2, help="Decoder context: 1 = unigram, 2 = bigram."
    )
    # --use-ctc is a training flag (training.py adds it); build_model reads params.use_ctc.
    parser.add_argument("--dropout", type=float, default=0.1, help="Encoder dropout rate.")


def num_parameters(model: Any) -> int:
    """Total number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def preset_table(vocab_size: int = 500) -> list[tuple[str, int]]:
    """``[(preset, parameter count)]`` measured by building each preset at ``vocab_size``."""
    return [
        (name, num_parameters(build_model({"model_preset": name, "vocab_size": vocab_size})))
        for name in PRESETS
    ]


def all_presets_table() -> str:
    """The parameter counts of every preset, Conformer and Zipformer, as a text table.

    Conformer presets at vocabulary 500; Zipformer presets at 500, the
    ``zipformer-synth-*`` ones at 50 (the synthetic corpus's BPE size) and
    also at 500 for comparison.
    """
    rows = [("conformer", name, 500, n) for name, n in preset_table()]
    rows += [("zipformer", name, v, n) for name, v, n in zipformer_preset_table()]
    rows += [
        ("zipformer", name, v, n)
        for name, v, n in zipformer_preset_table(vocab_size=500)
        if "synth" in name
    ]
    lines = [f"{'encoder':10s} {'preset':24s} {'vocab':>5s} {'parameters':>12s}"]
    for enc, name, v, n in rows:
        lines.append(f"{enc:10s} {name:24s} {v:5d} {n:12,d}  ({n / 1e6:.2f} M)")
    return "\n".join(lines)


if __name__ == "__main__":
    print(all_presets_table())

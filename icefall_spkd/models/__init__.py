"""Transducer models: Conformer or Zipformer2 encoder, stateless decoder, joiner, presets.

Public API: :func:`build_model` (Conformer presets/dims, or a Zipformer from
icefall's flag names when ``encoder_type == "zipformer"``), :func:`from_icefall`
(build a Zipformer transducer and load an icefall state_dict strictly),
:func:`set_batch_count` (drive the Zipformer's scheduled regularisers).
"""

from .conformer import Conformer, subsampled_lengths
from .decoder import Decoder
from .encoder_interface import EncoderInterface
from .icefall_decoder import IcefallDecoder
from .joiner import Joiner
from .presets import (
    PRESETS,
    add_model_arguments,
    build_model,
    encoder_type_of,
    resolve_model_config,
)
from .scaling import set_batch_count
from .transducer import Transducer, TransducerOutputs
from .zipformer import Zipformer2
from .zipformer_build import (
    ZIPFORMER_PRESETS,
    IcefallLoadError,
    build_zipformer_model,
    from_icefall,
    resolve_zipformer_config,
)

__all__ = [
    "PRESETS",
    "ZIPFORMER_PRESETS",
    "Conformer",
    "Decoder",
    "EncoderInterface",
    "IcefallDecoder",
    "IcefallLoadError",
    "Joiner",
    "Transducer",
    "TransducerOutputs",
    "Zipformer2",
    "add_model_arguments",
    "build_model",
    "build_zipformer_model",
    "encoder_type_of",
    "from_icefall",
    "resolve_model_config",
    "resolve_zipformer_config",
    "set_batch_count",
    "subsampled_lengths",
]

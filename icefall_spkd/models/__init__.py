"""Transducer model: Conformer encoder, stateless decoder, joiner, presets."""

from .conformer import Conformer, subsampled_lengths
from .decoder import Decoder
from .encoder_interface import EncoderInterface
from .joiner import Joiner
from .presets import PRESETS, add_model_arguments, build_model, resolve_model_config
from .transducer import Transducer, TransducerOutputs

__all__ = [
    "PRESETS",
    "Conformer",
    "Decoder",
    "EncoderInterface",
    "Joiner",
    "Transducer",
    "TransducerOutputs",
    "add_model_arguments",
    "build_model",
    "resolve_model_config",
    "subsampled_lengths",
]

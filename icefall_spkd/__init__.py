"""icefall_spkd: a small icefall-style library for training tiny RNN-T models
with Sampling-Based Pruned Knowledge Distillation (SP-KD).

See ``README.md`` for the recipe and ``../shared/docs/SPKD.md`` for the method.
"""

__version__ = "0.1.0"

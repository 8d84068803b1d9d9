"""Zipformer presets for AISHELL-1 (the SP-KD authors' teacher and student).

Registered into :data:`icefall_spkd.models.zipformer_build.ZIPFORMER_PRESETS`
(that module imports :data:`AISHELL_ZIPFORMER_PRESETS`), so
``--model-preset zipformer-aishell-teacher`` works in every script.

The authors trained icefall's first Zipformer (five stacks, downsampling
1,2,4,8,2) on AISHELL-1 with the character vocabulary of icefall's
``lang_char`` (4,336 tokens with ``<blk>``, ``<sos/eos>`` and ``<unk>``):

* teacher: layers 2,4,3,2,4, feed-forward 1024,1024,2048,2048,1024, 8 heads,
  dim 384 (86.5 M in their decoding logs);
* student: layers 1,1,1,1,1, feed-forward 256,256,512,512,256, 4 heads,
  dim 196 (13.6 M).

This repository's Zipformer2 has six stacks (downsampling 1,2,4,8,4,2). As
for ``zipformer-paper-student``, stacks 1-4 are theirs, the sixth (factor 2)
is their fifth, and the inserted fifth (factor 4) gets the small settings:
one layer for the teacher, feed-forward 256 for the student. Decoder and
joiner dims stay at icefall's 512, which is what the authors' 13.6 M needs
with 4,336 tokens (embedding, joiner output and simple-loss projections are
about 2 k parameters per token). Parameter counts at vocabulary 4,336
(``python -m icefall_spkd.models.presets_aishell``): teacher 86,896,231
(authors 86.5 M), student 13,632,719 (authors 13.6 M). Pure data: this
module imports nothing from the model code, so the registry can import it.
"""

from __future__ import annotations

from typing import Any, Dict

#: icefall's lang_char vocabulary size for AISHELL-1 (3 specials + 4,333 characters).
AISHELL_VOCAB_SIZE = 4336

AISHELL_ZIPFORMER_PRESETS: Dict[str, Dict[str, Any]] = {
    "zipformer-aishell-teacher": dict(
        num_encoder_layers="2,4,3,2,1,4",
        feedforward_dim="1024,1024,2048,2048,1024,1024",
        num_heads="8",
        encoder_dim="384",
        encoder_unmasked_dim="256",
        decoder_dim=512,
        joiner_dim=512,
    ),
    "zipformer-aishell-student": dict(
        num_encoder_layers="1,1,1,1,1,1",
        feedforward_dim="256,256,512,512,256,256",
        num_heads="4",
        encoder_dim="196",
        encoder_unmasked_dim="196",
        decoder_dim=512,
        joiner_dim=512,
    ),
}

#: The authors' parameter counts (their decoding logs), for the comparison.
AUTHORS_PARAMETERS = {"zipformer-aishell-teacher": 86.5e6, "zipformer-aishell-student": 13.6e6}


def main() -> None:
    """Print each preset's parameter count at the AISHELL-1 vocabulary against the authors'."""
    import torch

    from icefall_spkd.models.zipformer_build import build_zipformer_model, num_parameters

    for name, authors in AUTHORS_PARAMETERS.items():
        with torch.device("meta"):
            model = build_zipformer_model({"model_preset": name, "vocab_size": AISHELL_VOCAB_SIZE})
        n = num_parameters(model)
        print(f"{name}: {n:,} parameters at vocabulary {AISHELL_VOCAB_SIZE} "
              f"(authors {authors / 1e6:.1f} M, {100 * (n - authors) / authors:+.1f} %)")


if __name__ == "__main__":
    main()

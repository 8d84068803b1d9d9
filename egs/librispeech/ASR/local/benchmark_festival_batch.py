#!/usr/bin/env python3
"""Festival spoken in one process per voice batch against one process per utterance.

Usage (from egs/librispeech/ASR)::

    ./local/benchmark_festival_batch.py --num-utts 24

For each seen festival voice, the same ``--num-utts`` closed-vocabulary
sentences are synthesised twice into temporary directories with
:func:`icefall_spkd.synthetic_audio.synthesize_batch`: once as the corpus
builder does (one ``festival -b`` per voice batch) and once with the batch
switched off (``text2wave`` per utterance). Both include the sox and noise
post-processing. Prints the wall-clock seconds and the ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from icefall_spkd import synthetic_audio as sa
from icefall_spkd.synthetic_corpus import voice_catalogue
from icefall_spkd.synthetic_text import closed_vocabulary, load_sentences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num-utts", type=int, default=24)
    args = parser.parse_args()
    voices = [v for v in voice_catalogue(42) if v.engine == "festival" and not v.held_out]
    sentences = closed_vocabulary(load_sentences(min_words=4), 2000).sentences[: args.num_utts]
    batch_speaker = sa._festival_batch
    for v in voices:
        plans = [
            sa.UttPlan(f"{v.speaker}-1000-{i:04d}", "train", t, v, 1.0, 1.0, 0.1, 0.1)
            for i, t in enumerate(sentences)
        ]
        with tempfile.TemporaryDirectory() as d:
            t0 = time.time()
            batched = sa.synthesize_batch(plans, Path(d) / "batch")
            t_batch = time.time() - t0
            sa._festival_batch = lambda voice, group, tmp: {}  # every utterance alone
            try:
                t0 = time.time()
                alone = sa.synthesize_batch(plans, Path(d) / "alone")
                t_alone = time.time() - t0
            finally:
                sa._festival_batch = batch_speaker
        audio = sum(r.duration or 0.0 for r in batched)
        failed = sum(r.error is not None for r in batched + alone)
        print(
            f"{v.name}: {len(plans)} utterances, {audio:.1f} s of audio: one process per batch "
            f"{t_batch:.1f} s, one per utterance {t_alone:.1f} s ({t_alone / t_batch:.2f}x); "
            f"failed {failed}"
        )


if __name__ == "__main__":
    main()

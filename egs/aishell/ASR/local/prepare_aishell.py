#!/usr/bin/env python3
"""Write AISHELL-1 manifests with lhotse, accounting for every transcript line and every wav.

    python local/prepare_aishell.py --corpus-dir download/aishell --output-dir data/manifests

``--corpus-dir`` holds ``data_aishell/wav/{train,dev,test}/<speaker>/*.wav`` and
``data_aishell/transcript/aishell_transcript_v0.8.txt`` (what
``lhotse.recipes.download_aishell`` unpacks). Writes
``aishell_{recordings,supervisions}_{train,dev,test}.jsonl.gz`` with
``lhotse.recipes.prepare_aishell``, which skips a wav without a transcript
line (a warning only), never sees a transcript line without a wav, and
aborts on a wav it cannot read (or a blank transcript line); in that case
this script prepares the parts file by file instead, with lhotse's own text
normalisation. Either way, every utterance that is not in the manifests is
written with its reason to ``prepare_issues_<part>.tsv``, which the
validation stage merges into ``filter_report_<part>.tsv``:

* ``no_transcript``: a wav whose id has no transcript line;
* ``missing_audio``: a transcript line without a wav, listed under the part
  whose directory holds its speaker (``BAC009S0002W0122`` -> ``S0002``) or,
  for a speaker found in no part, under the part of AISHELL-1's speaker
  split (train S0002-S0723, dev S0724-S0763, test S0764-S0916; else train);
* ``unreadable_audio``: a wav lhotse cannot read.
"""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path
from typing import Dict, List, Tuple

from lhotse import Recording, RecordingSet, SupervisionSegment, SupervisionSet, load_manifest
from lhotse.recipes import prepare_aishell
from lhotse.recipes.aishell import text_normalize

from icefall_spkd.data_checks import (
    DROPPED,
    MISSING_AUDIO,
    NO_TRANSCRIPT,
    UNREADABLE_AUDIO,
    Issue,
    write_report,
)

PARTS = ("train", "dev", "test")
TRANSCRIPT = "data_aishell/transcript/aishell_transcript_v0.8.txt"
SPEAKER_SPLIT = (("train", 2, 723), ("dev", 724, 763), ("test", 764, 916))


def get_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus-dir", type=Path, required=True, help="the aishell/ directory")
    p.add_argument("--output-dir", type=Path, default=Path("data/manifests"))
    return p.parse_args()


def read_transcript(path: Path) -> Dict[str, str]:
    """``{utt_id: text}`` for every non-blank line (text as in the file, "" if none)."""
    out: Dict[str, str] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        fields = line.strip().split(maxsplit=1)
        if fields:
            out[fields[0]] = fields[1] if len(fields) > 1 else ""
    return out


def wavs_by_part(corpus_dir: Path) -> Dict[str, Dict[str, Path]]:
    """``{part: {utt_id: wav}}`` of ``data_aishell/wav/<part>/<speaker>/*.wav``."""
    return {
        part: {p.stem: p for p in sorted((corpus_dir / "data_aishell" / "wav" / part).rglob("*.wav"))}
        for part in PARTS
    }


def part_of_speaker(utt_id: str, speaker_dirs: Dict[str, str]) -> str:
    """The part whose wav directory holds the speaker of ``utt_id``, else AISHELL-1's split."""
    m = re.search(r"S(\d{4})", utt_id)
    if m is None:
        return "train"
    spk = f"S{m.group(1)}"
    if spk in speaker_dirs:
        return speaker_dirs[spk]
    n = int(m.group(1))
    return next((part for part, lo, hi in SPEAKER_SPLIT if lo <= n <= hi), "train")


def file_by_file(wavs: Dict[str, Path], transcript: Dict[str, str]) -> Tuple[RecordingSet, SupervisionSet]:
    """lhotse's per-utterance manifests, skipping (not aborting on) unreadable wavs."""
    recs, sups = [], []
    for utt_id, path in wavs.items():
        if utt_id not in transcript:
            continue
        try:
            rec = Recording.from_file(path)
        except Exception as e:
            logging.warning(f"{path}: cannot be read ({e}); reported, skipped")
            continue
        text = text_normalize(transcript[utt_id]).strip().replace(" ", "")
        recs.append(rec)
        sups.append(SupervisionSegment(id=utt_id, recording_id=rec.id, start=0.0, duration=rec.duration,
                                       channel=0, language="Chinese", speaker=path.parent.name, text=text))
    return RecordingSet.from_recordings(recs), SupervisionSet.from_segments(sups)


def main() -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s [%(filename)s:%(lineno)d] %(message)s",
                        level=logging.INFO)
    args = get_args()
    transcript_path = args.corpus_dir / TRANSCRIPT
    if not transcript_path.is_file():
        raise FileNotFoundError(
            f"{transcript_path} does not exist: download AISHELL-1 first (prepare.sh --stage 0) "
            f"or point --dl-dir at the directory holding aishell/data_aishell")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    transcript = read_transcript(transcript_path)
    wavs = wavs_by_part(args.corpus_dir)
    try:
        prepare_aishell(args.corpus_dir, output_dir=args.output_dir)
    except Exception as e:
        logging.warning(f"lhotse.prepare_aishell failed on {args.corpus_dir} ({e!r}); "
                        "preparing it file by file instead")
        for part in PARTS:
            recs, sups = file_by_file(wavs[part], transcript)
            recs.to_file(args.output_dir / f"aishell_recordings_{part}.jsonl.gz")
            sups.to_file(args.output_dir / f"aishell_supervisions_{part}.jsonl.gz")

    speaker_dirs = {p.parent.name: part for part in PARTS for p in wavs[part].values()}
    issues: Dict[str, List[Issue]] = {part: [] for part in PARTS}
    all_wavs = {u for part in PARTS for u in wavs[part]}
    for part in PARTS:
        have = {s.id for s in load_manifest(args.output_dir / f"aishell_supervisions_{part}.jsonl.gz")}
        for utt_id, path in wavs[part].items():
            if utt_id in have:
                continue
            if utt_id not in transcript:
                issues[part].append(Issue(utt_id, NO_TRANSCRIPT, DROPPED, f"{path} has no line in {transcript_path}"))
            else:
                issues[part].append(Issue(utt_id, UNREADABLE_AUDIO, DROPPED, f"lhotse cannot read {path}"))
    for utt_id in transcript:
        if utt_id not in all_wavs:
            part = part_of_speaker(utt_id, speaker_dirs)
            issues[part].append(Issue(utt_id, MISSING_AUDIO, DROPPED,
                                      f"no {utt_id}.wav under data_aishell/wav (listed in {transcript_path})"))
    for part in PARTS:
        write_report(args.output_dir / f"prepare_issues_{part}.tsv", issues[part])
        logging.info(f"[{part}] {len(wavs[part])} wav(s), {len(issues[part])} without a usable "
                     f"transcript/audio pair (see prepare_issues_{part}.tsv)")


if __name__ == "__main__":
    main()

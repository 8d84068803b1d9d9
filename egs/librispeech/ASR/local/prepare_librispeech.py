#!/usr/bin/env python3
"""Write LibriSpeech manifests with lhotse, accounting for every transcript line.

    python local/prepare_librispeech.py --corpus-dir download/LibriSpeech \
        --output-dir data/manifests --parts train-clean-100 dev-clean ... --nj 2

Writes ``librispeech_{recordings,supervisions}_<part>.jsonl.gz`` with
``lhotse.recipes.prepare_librispeech``. lhotse skips an utterance whose FLAC
is missing (a warning only) and aborts the whole part on an unreadable FLAC
or a transcript line with no words; in the latter case this script falls back
to a per-line preparation with lhotse's own ``parse_utterance``. Either way,
every transcript id absent from the manifests is written with its reason to
``prepare_issues_<part>.tsv``, which the validation stage merges into
``filter_report_<part>.tsv``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Dict, List, Tuple

from lhotse import RecordingSet, SupervisionSet, load_manifest
from lhotse.recipes import prepare_librispeech
from lhotse.recipes.librispeech import parse_utterance

from icefall_spkd.data_checks import (
    DROPPED,
    EMPTY_TRANSCRIPT,
    MISSING_AUDIO,
    UNREADABLE_AUDIO,
    Issue,
    write_report,
)


def get_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus-dir", type=Path, required=True, help="the LibriSpeech/ directory")
    p.add_argument("--output-dir", type=Path, default=Path("data/manifests"))
    p.add_argument("--parts", nargs="+", required=True, help="e.g. train-clean-100 dev-clean")
    p.add_argument("--nj", type=int, default=1)
    return p.parse_args()


def transcript_lines(part_dir: Path) -> Dict[str, Tuple[str, Path]]:
    """``{utt_id: (text, trans_file)}`` for every line of every ``*.trans.txt``."""
    out: Dict[str, Tuple[str, Path]] = {}
    for trans in sorted(part_dir.rglob("*.trans.txt")):
        for line in trans.read_text(errors="replace").splitlines():
            if not line.strip():
                continue
            fields = line.strip().split(maxsplit=1)
            out[fields[0]] = (fields[1] if len(fields) > 1 else "", trans)
    return out


def audio_path(part_dir: Path, utt_id: str) -> Path:
    """``<part>/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac``."""
    return part_dir / Path(utt_id.replace("-", "/")).parent / f"{utt_id}.flac"


def robust_prepare(part_dir: Path) -> Tuple[RecordingSet, SupervisionSet]:
    """Per-line preparation that skips (rather than aborts on) bad lines.

    Uses lhotse's ``parse_utterance`` for each line; lines without words get
    an empty transcript so that the validation stage reports them.
    """
    recs, sups = [], []
    for utt_id, (text, _) in transcript_lines(part_dir).items():
        try:
            res = parse_utterance(part_dir, f"{utt_id} {text or '<EMPTY>'}", {})
        except Exception as e:
            logging.warning(f"{audio_path(part_dir, utt_id)}: cannot be read ({e}); reported, skipped")
            continue
        if res is None:
            continue
        rec, sup = res
        if not text:
            sup = sup.transform_text(lambda _t: "")
        recs.append(rec)
        sups.append(sup)
    return RecordingSet.from_recordings(recs), SupervisionSet.from_segments(sups)


def missing_issues(part_dir: Path, sups: SupervisionSet) -> List[Issue]:
    """Issues for transcript ids that did not make it into the manifests."""
    have = {s.id for s in sups}
    issues = []
    for utt_id, (text, trans) in transcript_lines(part_dir).items():
        if utt_id in have:
            continue
        path = audio_path(part_dir, utt_id)
        if not path.is_file():
            issues.append(Issue(utt_id, MISSING_AUDIO, DROPPED, f"no such file: {path} (listed in {trans})"))
        elif not text:
            issues.append(Issue(utt_id, EMPTY_TRANSCRIPT, DROPPED, f"no words on its line in {trans}"))
        else:
            issues.append(Issue(utt_id, UNREADABLE_AUDIO, DROPPED, f"lhotse cannot read {path}"))
    return issues


def prepare_part(corpus_dir: Path, output_dir: Path, part: str, nj: int) -> None:
    """Manifests plus ``prepare_issues_<part>.tsv`` for one part."""
    part_dir = corpus_dir / part
    if not part_dir.is_dir():
        raise FileNotFoundError(
            f"{part_dir} does not exist: download it first (prepare.sh --stage 0) "
            f"or point --dl-dir at the directory holding LibriSpeech/"
        )
    rec_path = output_dir / f"librispeech_recordings_{part}.jsonl.gz"
    sup_path = output_dir / f"librispeech_supervisions_{part}.jsonl.gz"
    try:
        prepare_librispeech(corpus_dir, dataset_parts=[part], output_dir=output_dir, num_jobs=nj)
        sups = load_manifest(sup_path)
    except Exception as e:
        logging.warning(f"lhotse.prepare_librispeech failed on {part_dir} ({e}); "
                        f"preparing it line by line instead")
        recs, sups = robust_prepare(part_dir)
        recs.to_file(rec_path)
        sups.to_file(sup_path)
    issues = missing_issues(part_dir, sups)
    write_report(output_dir / f"prepare_issues_{part}.tsv", issues)
    logging.info(f"[{part}] {len(sups)} utterances in manifests, {len(issues)} transcript line(s) "
                 f"without usable audio (see prepare_issues_{part}.tsv)")


def main() -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s [%(filename)s:%(lineno)d] %(message)s",
                        level=logging.INFO)
    args = get_args()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for part in args.parts:
        prepare_part(args.corpus_dir, args.output_dir, part, args.nj)


if __name__ == "__main__":
    main()

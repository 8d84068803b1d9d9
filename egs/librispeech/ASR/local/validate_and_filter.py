#!/usr/bin/env python3
"""Preparation-time data checks, pass 1 (before BPE) and pass 2 (after BPE).

Pass 1 (``--pass audio-text``), for each part:
  reads   data/manifests/librispeech_{recordings,supervisions}_<part>.jsonl.gz
  writes  data/manifests/librispeech_cuts_<part>_validated.jsonl.gz
          data/manifests/filter_report_<part>.tsv   (fresh; merges prepare_issues_<part>.tsv)
Pass 2 (``--pass tokens``), for each part, with every ``data/lang_bpe_<N>``:
  reads   data/manifests/librispeech_cuts_<part>_validated.jsonl.gz
  writes  data/manifests/librispeech_cuts_<part>_filtered.jsonl.gz
          filter_report_<part>.tsv (its own rows replaced, pass-1 rows kept)

Parts whose name starts with ``test`` keep token-level problems (reported,
action ``kept``) so that test sets stay complete; other parts drop them.
See icefall_spkd/data_checks.py for the reasons and actions.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import List

from lhotse import CutSet, load_manifest, load_manifest_lazy

from icefall_spkd.data_checks import (
    TOKEN_REASONS,
    check_tokens,
    log_summary,
    read_report,
    validate_part,
    write_if_changed,
    write_report,
)
from icefall_spkd.utils import str2bool


def get_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pass", dest="which", choices=["audio-text", "tokens"], required=True)
    p.add_argument("--manifest-dir", type=Path, default=Path("data/manifests"))
    p.add_argument("--parts", nargs="+", required=True)
    p.add_argument("--nj", type=int, default=1, help="processes for decoding audio (pass 1)")
    p.add_argument("--max-chars-per-sec", type=float, default=30.0,
                   help="pass 1: drop transcripts denser than this (non-space chars per second)")
    p.add_argument("--full-read", type=str2bool, default=True,
                   help="pass 1: decode all audio (false: check files and headers only)")
    p.add_argument("--lang-dirs", type=Path, nargs="*", default=[],
                   help="pass 2: data/lang_bpe_<N> directories holding bpe.model")
    p.add_argument("--speed-perturb", type=str2bool, default=False,
                   help="pass 2: count frames on the x1.1 speed-perturbed audio")
    return p.parse_args()


def audio_text_pass(args: argparse.Namespace, part: str) -> None:
    """Pass 1 for one part."""
    md = args.manifest_dir
    rec_path = md / f"librispeech_recordings_{part}.jsonl.gz"
    sup_path = md / f"librispeech_supervisions_{part}.jsonl.gz"
    for p in (rec_path, sup_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} is missing: run the manifest stage of prepare.sh first")
    recs, sups = load_manifest(rec_path), load_manifest(sup_path)
    cuts, issues = validate_part(
        recs, sups,
        converted_dir=md / "converted_audio" / part,
        max_chars_per_sec=args.max_chars_per_sec,
        full_read=args.full_read,
        num_jobs=args.nj,
    )
    issues = read_report(md / f"prepare_issues_{part}.tsv") + issues
    write_if_changed(cuts, md / f"librispeech_cuts_{part}_validated.jsonl.gz")
    write_report(md / f"filter_report_{part}.tsv", issues)
    log_summary(part, issues, total=len(sups) + len(read_report(md / f"prepare_issues_{part}.tsv")),
                kept=len(cuts))


def tokens_pass(args: argparse.Namespace, part: str) -> None:
    """Pass 2 for one part (every BPE model in --lang-dirs)."""
    import sentencepiece as spm

    md = args.manifest_dir
    src = md / f"librispeech_cuts_{part}_validated.jsonl.gz"
    if not src.is_file():
        raise FileNotFoundError(f"{src} is missing: run the validation stage of prepare.sh first")
    if not args.lang_dirs:
        raise ValueError("--pass tokens needs --lang-dirs data/lang_bpe_<N> (train BPE first)")
    cuts: CutSet = load_manifest_lazy(src).to_eager()
    total = len(cuts)
    drop = not part.startswith("test")
    all_issues: List = []
    for lang in args.lang_dirs:
        model = lang / "bpe.model"
        if not model.is_file():
            raise FileNotFoundError(f"{model} is missing: run the BPE stage of prepare.sh first")
        sp = spm.SentencePieceProcessor(model_file=str(model))
        cuts, issues = check_tokens(
            cuts, encode=sp.encode, unk_id=sp.piece_to_id("<unk>"), drop=drop,
            max_speed_factor=1.1 if args.speed_perturb else 1.0, model_name=lang.name,
        )
        all_issues.extend(issues)
    write_if_changed(cuts, md / f"librispeech_cuts_{part}_filtered.jsonl.gz")
    write_report(md / f"filter_report_{part}.tsv", all_issues, replace_reasons=TOKEN_REASONS)
    log_summary(part, all_issues, total=total, kept=len(cuts))


def main() -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s [%(filename)s:%(lineno)d] %(message)s",
                        level=logging.INFO)
    args = get_args()
    for part in args.parts:
        if args.which == "audio-text":
            audio_text_pass(args, part)
        else:
            tokens_pass(args, part)


if __name__ == "__main__":
    main()

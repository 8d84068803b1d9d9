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

``--prefix aishell --language zh`` (egs/aishell/ASR/prepare.sh) reads and
writes ``aishell_*`` files, normalises transcripts with
icefall_spkd/text_zh.py and takes ``data/lang_char`` (a character
``tokens.txt``) in ``--lang-dirs``.

Parts whose name starts with ``test`` keep token-level problems (reported,
action ``kept``) so that test sets stay complete; other parts drop them.
See icefall_spkd/data_checks.py for the reasons and actions.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Callable, List, Tuple

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
from icefall_spkd.text import normalize_text
from icefall_spkd.utils import str2bool


def get_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pass", dest="which", choices=["audio-text", "tokens"], required=True)
    p.add_argument("--manifest-dir", type=Path, default=Path("data/manifests"))
    p.add_argument("--parts", nargs="+", required=True)
    p.add_argument("--prefix", default="librispeech",
                   help="manifest name prefix: <prefix>_recordings_<part>.jsonl.gz ... (aishell)")
    p.add_argument("--language", choices=["en", "zh"], default="en",
                   help="pass 1 transcript normaliser: en (LibriSpeech style, icefall_spkd/text.py) "
                        "or zh (AISHELL, icefall_spkd/text_zh.py)")
    p.add_argument("--nj", type=int, default=1, help="processes for decoding audio (pass 1)")
    p.add_argument("--max-chars-per-sec", type=float, default=30.0,
                   help="pass 1: drop transcripts denser than this (non-space chars per second)")
    p.add_argument("--full-read", type=str2bool, default=True,
                   help="pass 1: decode all audio (false: check files and headers only)")
    p.add_argument("--lang-dirs", type=Path, nargs="*", default=[],
                   help="pass 2: data/lang_bpe_<N> directories holding bpe.model, or "
                        "data/lang_char holding a character tokens.txt")
    p.add_argument("--speed-perturb", type=str2bool, default=False,
                   help="pass 2: count frames on the x1.1 speed-perturbed audio")
    return p.parse_args()


def audio_text_pass(args: argparse.Namespace, part: str) -> None:
    """Pass 1 for one part."""
    md = args.manifest_dir
    rec_path = md / f"{args.prefix}_recordings_{part}.jsonl.gz"
    sup_path = md / f"{args.prefix}_supervisions_{part}.jsonl.gz"
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
        normalize=_normalizer(args.language),
    )
    issues = read_report(md / f"prepare_issues_{part}.tsv") + issues
    write_if_changed(cuts, md / f"{args.prefix}_cuts_{part}_validated.jsonl.gz")
    write_report(md / f"filter_report_{part}.tsv", issues)
    log_summary(part, issues, total=len(sups) + len(read_report(md / f"prepare_issues_{part}.tsv")),
                kept=len(cuts))


def _normalizer(language: str) -> Callable[[str], str]:
    if language == "zh":
        from icefall_spkd.text_zh import normalize_zh

        return normalize_zh
    return normalize_text


def _tokenizer(lang: Path) -> Tuple[Callable, int]:
    """``(encode, unk_id)`` of ``lang/bpe.model``, else of a character ``lang/tokens.txt``."""
    if (lang / "bpe.model").is_file():
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(lang / "bpe.model"))
        return sp.encode, sp.piece_to_id("<unk>")
    if (lang / "tokens.txt").is_file() and not lang.name.startswith("lang_bpe"):
        from icefall_spkd.text_zh import CharTokenizer

        table = CharTokenizer(lang / "tokens.txt")
        return table.encode, table.unk_id
    raise FileNotFoundError(
        f"{lang}/bpe.model (or, for a character vocabulary, {lang}/tokens.txt) is missing: "
        "run the BPE/char stage of prepare.sh first")


def tokens_pass(args: argparse.Namespace, part: str) -> None:
    """Pass 2 for one part (every BPE model or character table in --lang-dirs)."""
    md = args.manifest_dir
    src = md / f"{args.prefix}_cuts_{part}_validated.jsonl.gz"
    if not src.is_file():
        raise FileNotFoundError(f"{src} is missing: run the validation stage of prepare.sh first")
    if not args.lang_dirs:
        raise ValueError("--pass tokens needs --lang-dirs data/lang_bpe_<N> or data/lang_char")
    cuts: CutSet = load_manifest_lazy(src).to_eager()
    total = len(cuts)
    drop = not part.startswith("test")
    all_issues: List = []
    for lang in args.lang_dirs:
        encode, unk_id = _tokenizer(lang)
        cuts, issues = check_tokens(
            cuts, encode=encode, unk_id=unk_id, drop=drop,
            max_speed_factor=1.1 if args.speed_perturb else 1.0, model_name=lang.name,
        )
        all_issues.extend(issues)
    write_if_changed(cuts, md / f"{args.prefix}_cuts_{part}_filtered.jsonl.gz")
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

#!/usr/bin/env python3
"""Train a sentencepiece unigram model on the training transcripts.

    python local/train_bpe_model.py --lang-dir data/lang_bpe_500 --vocab-size 500 \
        --cuts data/manifests/librispeech_cuts_train_validated.jsonl.gz

Writes ``<lang-dir>/bpe.model``, ``tokens.txt`` ("<sym> <id>" per line) and
``transcript_words.txt`` (the training text). Ids 0, 1, 2 are always
``<blk>``, ``<sos/eos>``, ``<unk>`` (user-defined symbols plus ``unk_id=2``;
no separate bos/eos pieces). When the text is too small to support the
requested vocabulary, sentencepiece's own maximum is used instead and the
clipping is logged (``lang_bpe_<N>`` keeps its requested name).
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, List

import sentencepiece as spm
from lhotse import load_manifest_lazy

SPECIAL_SYMBOLS = ("<blk>", "<sos/eos>")  # ids 0 and 1
UNK_ID = 2


def get_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lang-dir", type=Path, required=True)
    p.add_argument("--vocab-size", type=int, required=True)
    p.add_argument("--cuts", type=Path, nargs="+", required=True,
                   help="cut manifests whose supervision texts are the training text")
    p.add_argument("--force", action="store_true", help="retrain even if bpe.model exists")
    return p.parse_args()


def collect_texts(cut_paths: Iterable[Path]) -> List[str]:
    """All non-empty supervision texts of the given cut manifests."""
    texts = []
    for path in cut_paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path} is missing: run the validation stage of prepare.sh first")
        for cut in load_manifest_lazy(path):
            texts.extend(s.text for s in cut.supervisions if s.text)
    return texts


def _train(text_file: Path, prefix: Path, vocab_size: int) -> None:
    spm.SentencePieceTrainer.train(
        input=str(text_file),
        model_prefix=str(prefix),
        model_type="unigram",
        vocab_size=vocab_size,
        character_coverage=1.0,
        input_sentence_size=100_000_000,
        user_defined_symbols=list(SPECIAL_SYMBOLS),
        unk_id=UNK_ID,
        bos_id=-1,
        eos_id=-1,
        num_threads=2,
        minloglevel=2,
    )


def train_bpe(texts: List[str], lang_dir: Path, vocab_size: int) -> int:
    """Train and write ``bpe.model``; returns the vocabulary size actually used."""
    if not texts:
        raise ValueError("no training transcripts: every training utterance was filtered out "
                         "(see data/manifests/filter_report_*.tsv)")
    lang_dir.mkdir(parents=True, exist_ok=True)
    text_file = lang_dir / "transcript_words.txt"
    text_file.write_text("\n".join(texts) + "\n")
    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(tmp) / "bpe"
        used = vocab_size
        try:
            _train(text_file, prefix, used)
        except RuntimeError as e:
            m = re.search(r"<=\s*(\d+)", str(e))
            if not m:
                raise
            used = int(m.group(1))
            logging.warning(f"{lang_dir}: the training text ({len(texts)} transcripts) supports at "
                            f"most {used} pieces; vocabulary clipped from {vocab_size} to {used}")
            _train(text_file, prefix, used)
        shutil.move(str(prefix.with_suffix(".model")), lang_dir / "bpe.model")
    return used


def write_tokens(lang_dir: Path) -> None:
    """``tokens.txt``: one "<symbol> <id>" line per piece, checking the special ids."""
    sp = spm.SentencePieceProcessor(model_file=str(lang_dir / "bpe.model"))
    expected = {"<blk>": 0, "<sos/eos>": 1, "<unk>": 2}
    for sym, i in expected.items():
        if sp.piece_to_id(sym) != i:
            raise RuntimeError(f"{lang_dir}/bpe.model: {sym} has id {sp.piece_to_id(sym)}, expected {i}")
    with open(lang_dir / "tokens.txt", "w") as f:
        for i in range(sp.get_piece_size()):
            f.write(f"{sp.id_to_piece(i)} {i}\n")


def main() -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s [%(filename)s:%(lineno)d] %(message)s",
                        level=logging.INFO)
    args = get_args()
    model = args.lang_dir / "bpe.model"
    if model.is_file() and not args.force:
        logging.info(f"{model} exists: skipping (use --force to retrain)")
    else:
        texts = collect_texts(args.cuts)
        used = train_bpe(texts, args.lang_dir, args.vocab_size)
        logging.info(f"{model}: unigram, {used} pieces, trained on {len(texts)} transcripts")
    write_tokens(args.lang_dir)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Write the character vocabulary ``data/lang_char/tokens.txt`` (icefall's AISHELL layout).

    python local/prepare_char.py --lang-dir data/lang_char \
        --cuts data/manifests/aishell_cuts_{train,dev,test}_validated.jsonl.gz

``<blk>`` 0, ``<sos/eos>`` 1, ``<unk>`` 2, then every character of the
checked transcripts in order of first appearance (icefall's
``local/prepare_char.py`` reads the whole transcript file, train, dev and
test, in the same way; here the transcripts are the ones that passed the
checks, already normalised by icefall_spkd/text_zh.py). Also writes
``lang_char/text`` (one normalised transcript per line), as icefall does.
An existing ``tokens.txt`` is kept (delete it to rebuild): models are tied
to their vocabulary's ids.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from lhotse import load_manifest_lazy

from icefall_spkd.text_zh import CharTokenizer, char_table, write_tokens


def get_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lang-dir", type=Path, default=Path("data/lang_char"))
    p.add_argument("--cuts", type=Path, nargs="+", required=True, help="checked cut manifests, train first")
    return p.parse_args()


def main() -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s [%(filename)s:%(lineno)d] %(message)s",
                        level=logging.INFO)
    args = get_args()
    tokens = args.lang_dir / "tokens.txt"
    if tokens.is_file():
        logging.info(f"{tokens} exists ({CharTokenizer(tokens).vocab_size} tokens): kept")
        return
    texts = []
    for path in args.cuts:
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run the validation stage of prepare.sh first")
        texts.extend(s.text for c in load_manifest_lazy(path) for s in c.supervisions)
    table = char_table(texts)
    args.lang_dir.mkdir(parents=True, exist_ok=True)
    (args.lang_dir / "text").write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    write_tokens(table, tokens)
    logging.info(f"Wrote {tokens}: {len(table)} tokens ({len(table) - 3} characters) from {len(texts)} transcripts")


if __name__ == "__main__":
    main()

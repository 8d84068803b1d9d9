#!/usr/bin/env python3
"""Compute 80-dim fbank features for checked cuts and store them with lhotse.

    python local/compute_fbank.py --parts train dev test-clean test-other --nj 2
    python local/compute_fbank.py --parts train-clean-100 dev-clean dev-other ... \
        --combine train=train-clean-100 dev=dev-clean,dev-other

For each part, reads ``<manifest-dir>/librispeech_cuts_<part>_filtered.jsonl.gz``
and writes ``<output-dir>/librispeech_cuts_<part>.jsonl.gz`` plus the arrays in
``<output-dir>/librispeech_feats_<part>/`` (``LilcomChunkyWriter``).
``--combine NAME=P1,P2`` then writes ``librispeech_cuts_NAME.jsonl.gz`` as the
concatenation of those parts' feature cuts (LibriSpeech's train/dev).
kaldifeat is used when it imports, else lhotse.Fbank with identical settings
(see icefall_spkd/features.py). A part whose output exists is skipped. ``--prefix aishell`` (egs/aishell/ASR)
reads and writes ``aishell_*`` files instead of ``librispeech_*``.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional

import torch
from lhotse import CutSet, LilcomChunkyWriter, load_manifest_lazy
from lhotse.lazy import LazyIteratorChain

from icefall_spkd.data_checks import DROPPED, UNREADABLE_AUDIO, Issue, read_report, write_report
from icefall_spkd.features import make_fbank_extractor, set_single_thread
from icefall_spkd.utils import str2bool


def get_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest-dir", type=Path, default=Path("data/manifests"))
    p.add_argument("--output-dir", type=Path, default=Path("data/fbank"))
    p.add_argument("--parts", nargs="+", required=True)
    p.add_argument("--prefix", default="librispeech",
                   help="file name prefix: <prefix>_cuts_<part>... (aishell for egs/aishell)")
    p.add_argument("--input-suffix", default="_filtered",
                   help="reads librispeech_cuts_<part><suffix>.jsonl.gz from --manifest-dir")
    p.add_argument("--combine", nargs="*", default=[], metavar="NAME=P1,P2",
                   help="also write librispeech_cuts_NAME.jsonl.gz = concatenation of parts")
    p.add_argument("--speed-perturb", type=str2bool, default=False,
                   help="add x0.9 and x1.1 speed-perturbed copies of parts named train*")
    p.add_argument("--nj", type=int, default=1, help="feature worker processes")
    p.add_argument("--extractor", choices=["auto", "kaldifeat", "lhotse"], default="auto")
    return p.parse_args()


def parse_combine(specs: List[str]) -> Dict[str, List[str]]:
    """``["train=a,b"] -> {"train": ["a", "b"]}``."""
    out = {}
    for spec in specs:
        name, sep, parts = spec.partition("=")
        if not sep or not name or not parts:
            raise ValueError(f"--combine expects NAME=PART1,PART2, got {spec!r}")
        out[name] = [p for p in parts.split(",") if p]
    return out


def compute_part(args: argparse.Namespace, part: str, executor: Optional[ProcessPoolExecutor]) -> None:
    """Features for one part; ``executor`` is shared by parts.

    Skipped when the output exists and is newer than its input manifest (like
    make), so features are recomputed after the corpus or the checks change.
    """
    out = args.output_dir / f"{args.prefix}_cuts_{part}.jsonl.gz"
    src = args.manifest_dir / f"{args.prefix}_cuts_{part}{args.input_suffix}.jsonl.gz"
    if not src.is_file():
        raise FileNotFoundError(f"{src} is missing: run the data-check stages of prepare.sh first")
    if out.is_file() and out.stat().st_mtime >= src.stat().st_mtime:
        logging.info(f"{out} exists and is newer than {src.name}: skipping")
        return
    if out.is_file():
        logging.info(f"{out} is older than {src.name}: recomputing")
    cuts = load_manifest_lazy(src).to_eager()
    n_in = len(cuts)
    if args.speed_perturb and part.startswith("train"):
        logging.info(f"[{part}] adding x0.9 and x1.1 speed perturbation")
        cuts = cuts + cuts.perturb_speed(0.9) + cuts.perturb_speed(1.1)
    extractor = make_fbank_extractor(args.extractor)
    logging.info(f"[{part}] {len(cuts)} cuts with {type(extractor).__name__}, nj={args.nj}")
    with_feats = cuts.compute_and_store_features(
        extractor=extractor,
        storage_path=args.output_dir / f"{args.prefix}_feats_{part}",
        num_jobs=args.nj,
        executor=executor,
        storage_type=LilcomChunkyWriter,
        progress_bar=True,
    ).to_eager()
    # lhotse skips (with only a warning) cuts whose audio fails to load: report them.
    lost = sorted(set(cuts.ids) - set(with_feats.ids))
    if lost:
        report = args.manifest_dir / f"filter_report_{part}.tsv"
        write_report(report, read_report(report) + [
            Issue(i, UNREADABLE_AUDIO, DROPPED, "audio failed to load during feature extraction")
            for i in lost])
        logging.warning(f"[{part}] {len(lost)} cut(s) failed feature extraction; listed in {report}")
    with_feats.to_file(out)
    logging.info(f"[{part}] wrote {out}: {len(with_feats)} cuts (from {n_in} checked utterances)")


def main() -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s [%(filename)s:%(lineno)d] %(message)s",
                        level=logging.INFO)
    torch.set_num_threads(1)
    args = get_args()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    executor = None
    if args.nj > 1:  # spawned workers with one torch thread each, reused by every part
        executor = ProcessPoolExecutor(args.nj, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=set_single_thread)
    try:
        for part in args.parts:
            compute_part(args, part, executor)
    finally:
        if executor is not None:
            executor.shutdown()
    for name, parts in parse_combine(args.combine).items():
        out = args.output_dir / f"{args.prefix}_cuts_{name}.jsonl.gz"
        srcs = [args.output_dir / f"{args.prefix}_cuts_{p}.jsonl.gz" for p in parts]
        missing = [s for s in srcs if not s.is_file()]
        if missing:
            raise FileNotFoundError(f"cannot build {out}: {missing} missing (add them to --parts)")
        CutSet(LazyIteratorChain(*[load_manifest_lazy(s) for s in srcs])).to_file(out)
        logging.info(f"wrote {out} = {' + '.join(parts)}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""How fast does an encoder learn this corpus? A small CTC probe over characters.

Trains an encoder with a linear CTC head on letters (26 + space + apostrophe)
and prints the dev loss and greedy CER on the first 40 dev utterances every
``--report-every`` updates. It exists to compare encoder designs quickly
(minutes, not hours) on the same data, optimizer and seed; it is how the
Conformer's output LayerNorms and input normalisation were found to slow
learning here (see ``icefall_spkd/models/conformer.py``).

Usage (from egs/librispeech/ASR, after ./prepare.sh)::

    ./local/ctc_probe.py --encoder conformer                    # the recipe's layout
    ./local/ctc_probe.py --encoder conformer --output-norm block   # original Conformer
    ./local/ctc_probe.py --encoder conformer --no-cmvn
    ./local/ctc_probe.py --encoder lstm                          # BiLSTM reference
    ./local/ctc_probe.py --encoder conformer --max-updates 800 --num-threads 1
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import List, Tuple

import kaldialign
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from icefall_spkd.data import AsrDataModule
from icefall_spkd.features import global_feature_stats
from icefall_spkd.models.conformer import Conformer
from icefall_spkd.training import _feature_lens, _texts_in_input_order

LETTERS = " ABCDEFGHIJKLMNOPQRSTUVWXYZ'"  # id = index + 1; 0 is blank


def encode_text(text: str) -> List[int]:
    """Character ids of ``text`` (characters outside :data:`LETTERS` are dropped)."""
    return [LETTERS.index(c) + 1 for c in text if c in LETTERS]


class LstmEncoder(nn.Module):
    """Frames stacked by 4 (40 ms, like the Conformer's output), 3-layer BiLSTM."""

    def __init__(self, num_features: int = 80, hidden: int = 192) -> None:
        super().__init__()
        self.stack = 4
        self.inp = nn.Linear(num_features * self.stack, 256)
        self.lstm = nn.LSTM(256, hidden, num_layers=3, bidirectional=True, batch_first=True)
        self.output_dim = 2 * hidden
        self.register_buffer("feature_mean", torch.zeros(num_features))
        self.register_buffer("feature_std", torch.ones(num_features))

    def set_feature_stats(self, mean: Tensor, std: Tensor) -> None:
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std)

    def forward(self, x: Tensor, x_lens: Tensor) -> Tuple[Tensor, Tensor]:
        x = (x - self.feature_mean) / self.feature_std
        t = x.shape[1] // self.stack
        x = x[:, : t * self.stack].reshape(x.shape[0], t, -1)
        h, _ = self.lstm(torch.relu(self.inp(x)))
        return h, x_lens // self.stack


class CtcProbe(nn.Module):
    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.output_dim, len(LETTERS) + 1)

    def forward(self, x: Tensor, x_lens: Tensor) -> Tuple[Tensor, Tensor]:
        h, h_lens = self.encoder(x, x_lens)
        return self.head(h).log_softmax(-1), h_lens


def greedy(log_probs: Tensor, n: int) -> str:
    out, prev = [], 0
    for i in log_probs[:n].argmax(-1).tolist():
        if i != prev and i != 0:
            out.append(LETTERS[i - 1])
        prev = i
    return "".join(out)


def ctc_loss(log_probs: Tensor, lens: Tensor, texts: List[str]) -> Tensor:
    ys = [torch.tensor(encode_text(t), dtype=torch.int64) for t in texts]
    y_lens = torch.tensor([len(y) for y in ys])
    return F.ctc_loss(
        log_probs.transpose(0, 1), torch.cat(ys), lens, y_lens, reduction="sum", zero_infinity=True
    ) / lens.sum()


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", choices=["conformer", "lstm"], default="conformer")
    p.add_argument("--output-norm", choices=["none", "block", "final"], default="none")
    p.add_argument("--no-cmvn", action="store_true", help="feed raw log-mel features")
    p.add_argument("--encoder-dim", type=int, default=96)
    p.add_argument("--num-layers", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam, constant")
    p.add_argument("--max-updates", type=int, default=1500)
    p.add_argument("--report-every", type=int, default=100)
    p.add_argument("--num-threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    AsrDataModule.add_arguments(p)
    p.set_defaults(max_duration=40.0, num_workers=0)
    return p


def main() -> None:
    args = get_parser().parse_args()
    logging.basicConfig(format="%(asctime)s %(message)s", level=logging.INFO)
    torch.set_num_threads(args.num_threads)
    torch.manual_seed(args.seed)
    dm = AsrDataModule(args)
    train_cuts = dm.train_cuts()
    if args.encoder == "conformer":
        d = args.encoder_dim
        encoder: nn.Module = Conformer(
            80, d, 4, 320 * d // 96, args.num_layers, 15, 0.1, output_norm=args.output_norm
        )
    else:
        encoder = LstmEncoder()
    if not args.no_cmvn:
        encoder.set_feature_stats(*global_feature_stats(train_cuts))
    model = CtcProbe(encoder)
    logging.info(f"{args.encoder}: {sum(p.numel() for p in model.parameters())} parameters")
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    dev = next(iter(dm.valid_dataloaders(dm.dev_cuts().subset(first=40))))
    dev_x, dev_lens = dev["inputs"], _feature_lens(dev, torch.device("cpu"))
    dev_texts = _texts_in_input_order(dev)
    t0, updates = time.time(), 0
    while updates < args.max_updates:
        for batch in dm.train_dataloaders(train_cuts):
            x, x_lens = batch["inputs"], _feature_lens(batch, torch.device("cpu"))
            log_probs, lens = model(x, x_lens)
            loss = ctc_loss(log_probs, lens, _texts_in_input_order(batch))
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            updates += 1
            if updates % args.report_every == 0:
                model.eval()
                with torch.no_grad():
                    lp, ll = model(dev_x, dev_lens)
                    dev_loss = ctc_loss(lp, ll, dev_texts).item()
                    errs = sum(
                        kaldialign.edit_distance(list(ref), list(greedy(lp[b], int(ll[b]))))["total"]
                        for b, ref in enumerate(dev_texts)
                    )
                model.train()
                cer = 100.0 * errs / sum(len(t) for t in dev_texts)
                print(
                    f"updates {updates} dev_loss {dev_loss:.3f} dev_CER {cer:.1f} "
                    f"elapsed {time.time() - t0:.0f}s",
                    flush=True,
                )
            if updates >= args.max_updates:
                break


if __name__ == "__main__":
    main()

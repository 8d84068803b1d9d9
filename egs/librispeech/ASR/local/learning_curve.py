#!/usr/bin/env python3
"""Learning curves of finished runs: dev loss and dev WER against updates, as a PNG.

Usage (from egs/librispeech/ASR)::

    ./local/learning_curve.py --exp-dir table/teacher/seed-42 --model-preset small \\
        --bpe-model data/lang_bpe_50/bpe.model --png RESULTS_learning_curve.png

    # several runs on one figure (e.g. the teacher and the baseline student)
    ./local/learning_curve.py --exp-dir table/teacher/seed-42 --model-preset small \\
        --exp-dir table/baseline/seed-42 --model-preset tiny --bpe-model ... --png ...

For each ``--exp-dir``:

- every saved checkpoint (``checkpoint-<update>.pt``, and ``epoch-<N>.pt`` at
  the update count stored in it) is decoded on dev with greedy search by
  ``spkd_transducer/decode.py`` (``--iter``/``--epoch`` with ``--avg 1`` and
  no running-average model: the weights as they were at that update). The
  ``errs-dev-*`` files go to ``<exp-dir>/greedy_search/`` as decode.py names
  them; a checkpoint whose file is there is not decoded again, so the script
  is resumable and cheap to re-run.
- the training loss (``tot_loss``, icefall's decayed running average, per
  frame) and the validation loss (per frame) are read from the training logs
  ``<exp-dir>/log/log-train-*`` (every resumption's log, later lines winning),
  or, when there is no log, from ``<exp-dir>/tensorboard`` (``train/tot_loss``,
  ``train/valid_loss``).

Outputs: the PNG (left: training and dev loss; right: dev WER and CER) and,
per run, ``<exp-dir>/learning_curve.tsv`` with the numbers.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

RECIPE = Path(__file__).resolve().parent.parent

# "global_batch 3, batch_loss 3.3e+02, loss[[frames=90, loss=3.69]], tot_loss[[frames=347, ...]]"
_TRAIN = re.compile(
    r"global_batch (\d+), batch_loss \S+, loss\[\[?[^\]]*\]?\], tot_loss\[\[?([^\]]*)\]?\]"
)
_VALID = re.compile(r"global_batch (\d+), validation: \[([^\]]*)\]")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--exp-dir", type=Path, action="append", required=True, help="repeatable")
    p.add_argument(
        "--model-preset",
        action="append",
        default=[],
        help="model preset of each --exp-dir, in order (one value: the same for all)",
    )
    p.add_argument("--label", action="append", default=[], help="legend label per --exp-dir")
    p.add_argument("--bpe-model", default="data/lang_bpe_500/bpe.model")
    p.add_argument("--max-duration", type=float, default=200.0)
    p.add_argument(
        "--decode-args", default="", help="more decode.py arguments (e.g. --manifest-dir DIR)"
    )
    p.add_argument("--stride", type=int, default=1, help="decode every N-th mid-epoch checkpoint")
    p.add_argument("--no-decode", action="store_true", help="plot only what is decoded already")
    p.add_argument("--png", type=Path, default=Path("RESULTS_learning_curve.png"))
    p.add_argument("--title", default="Learning curves (dev, greedy search)")
    return p


def _metrics(text: str) -> Dict[str, float]:
    """``"frames=10, loss=0.5"`` -> ``{"frames": 10.0, "loss": 0.5}``."""
    out = {}
    for part in text.split(","):
        k, sep, v = part.strip().partition("=")
        if sep:
            try:
                out[k] = float(v)
            except ValueError:
                pass
    return out


def read_log_losses(exp_dir: Path) -> Tuple[Dict[int, float], Dict[int, float]]:
    """``(train, valid)``: update -> loss per frame, from ``<exp-dir>/log/log-train-*``.

    Logs are read in name (date) order, so a resumed run's later lines win.
    """
    train: Dict[int, float] = {}
    valid: Dict[int, float] = {}
    for f in sorted((exp_dir / "log").glob("log-train-*")):
        for line in f.read_text(errors="replace").splitlines():
            m = _TRAIN.search(line)
            if m and "loss" in (vals := _metrics(m.group(2))):
                train[int(m.group(1))] = vals["loss"]
                continue
            m = _VALID.search(line)
            if m and "loss" in (vals := _metrics(m.group(2))):
                valid[int(m.group(1))] = vals["loss"]
    return dict(sorted(train.items())), dict(sorted(valid.items()))


def read_tensorboard_losses(exp_dir: Path) -> Tuple[Dict[int, float], Dict[int, float]]:
    """``(train, valid)`` from ``<exp-dir>/tensorboard`` (empty dicts when there is none)."""
    tb = exp_dir / "tensorboard"
    if not tb.is_dir():
        return {}, {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags().get("scalars", []))

    def series(tag: str) -> Dict[int, float]:
        return {e.step: e.value for e in acc.Scalars(tag)} if tag in tags else {}

    return series("train/tot_loss"), series("train/valid_loss")


def read_losses(exp_dir: Path) -> Tuple[Dict[int, float], Dict[int, float]]:
    """Training and validation losses of a run: its logs, else its tensorboard."""
    train, valid = read_log_losses(exp_dir)
    if not train and not valid:
        train, valid = read_tensorboard_losses(exp_dir)
    return train, valid


def checkpoint_updates(path: Path) -> int:
    """The update count stored in a checkpoint (``batch_idx_train``)."""
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if "batch_idx_train" not in ckpt:
        raise SystemExit(f"{path}: no batch_idx_train in it; is it a train.py checkpoint?")
    return int(ckpt["batch_idx_train"])


def find_points(exp_dir: Path, stride: int = 1) -> List[Tuple[int, str, int]]:
    """Checkpoints to decode: ``(update, "iter" or "epoch", number)``, by update.

    Every ``epoch-N.pt`` (N >= 1) and every ``stride``-th ``checkpoint-<update>.pt``;
    where both exist for one update, the epoch file is used.
    """
    points: Dict[int, Tuple[int, str, int]] = {}
    batches = sorted(
        int(m.group(1))
        for f in exp_dir.glob("checkpoint-*.pt")
        if (m := re.fullmatch(r"checkpoint-(\d+)\.pt", f.name))
    )
    for b in batches[stride - 1 :: max(stride, 1)]:
        points[b] = (b, "iter", b)
    for f in exp_dir.glob("epoch-*.pt"):
        m = re.fullmatch(r"epoch-(\d+)\.pt", f.name)
        if m and int(m.group(1)) >= 1:
            u = checkpoint_updates(f)
            points[u] = (u, "epoch", int(m.group(1)))
    return [points[u] for u in sorted(points)]


def errs_file(exp_dir: Path, kind: str, num: int) -> Path:
    """The errs file decode.py writes for one checkpoint (greedy, ``--avg 1``, no averaged model)."""
    return exp_dir / "greedy_search" / f"errs-dev-{kind}-{num}-avg-1.txt"


def decode_command(args, exp_dir: Path, preset: str, kind: str, num: int) -> List[str]:
    return [
        sys.executable, "spkd_transducer/decode.py",
        "--exp-dir", str(exp_dir),
        f"--{kind}", str(num),
        "--avg", "1",
        "--use-averaged-model", "false",
        "--decoding-method", "greedy_search",
        "--max-duration", str(args.max_duration),
        "--bpe-model", args.bpe_model,
        "--model-preset", preset,
        "--test-sets", "dev",
        *shlex.split(args.decode_args),
    ]  # fmt: skip


def decode_point(args, exp_dir: Path, preset: str, kind: str, num: int) -> None:
    cmd = decode_command(args, exp_dir, preset, kind, num)
    logging.info("$ " + " ".join(shlex.quote(c) for c in cmd))
    log = exp_dir / "learning-curve-decode.log"
    with open(log, "a") as f:
        proc = subprocess.run(cmd, cwd=RECIPE, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"decoding {kind} {num} of {exp_dir} failed; see {log}")


def curve(args, exp_dir: Path, preset: str) -> List[Dict[str, float]]:
    """One run's points: ``{"updates", "dev_wer", "dev_cer", "train_loss", "valid_loss"}``.

    Losses are those logged at the checkpoint's update (NaN where none was
    logged there); every logged loss is also returned by :func:`read_losses`
    for the loss panel.
    """
    from icefall_spkd.results_table import parse_errs_file

    train, valid = read_losses(exp_dir)
    rows = []
    for updates, kind, num in find_points(exp_dir, args.stride):
        f = errs_file(exp_dir, kind, num)
        if not f.exists():
            if args.no_decode:
                continue
            decode_point(args, exp_dir, preset, kind, num)
        e = parse_errs_file(f)
        rows.append(
            {
                "updates": updates,
                "dev_wer": e["wer"],
                "dev_cer": e.get("cer", math.nan),
                "train_loss": train.get(updates, math.nan),
                "valid_loss": valid.get(updates, math.nan),
            }
        )
    return rows


def write_tsv(path: Path, rows: Sequence[Dict[str, float]]) -> None:
    keys = ["updates", "dev_wer", "dev_cer", "train_loss", "valid_loss"]
    lines = ["\t".join(keys)]
    lines += ["\t".join(f"{r[k]:g}" for k in keys) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def plot(
    runs: Sequence[Tuple[str, List[Dict[str, float]], Dict[int, float], Dict[int, float]]],
    png: Path,
    title: str,
) -> None:
    """Left: training (dashed) and dev loss; right: dev WER (solid) and CER (dotted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_wer) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (label, rows, train, valid) in enumerate(runs):
        color = f"C{i}"
        if train:
            ax_loss.plot(list(train), list(train.values()), "--", color=color, alpha=0.6,
                         label=f"{label} train")  # fmt: skip
        if valid:
            ax_loss.plot(list(valid), list(valid.values()), "o-", color=color, label=f"{label} dev")
        xs = [r["updates"] for r in rows]
        ax_wer.plot(xs, [r["dev_wer"] for r in rows], "o-", color=color, label=f"{label} WER")
        if any(not math.isnan(r["dev_cer"]) for r in rows):
            ax_wer.plot(xs, [r["dev_cer"] for r in rows], ":", color=color, label=f"{label} CER")
    ax_loss.set_xlabel("updates")
    ax_loss.set_ylabel("loss per frame")
    ax_loss.set_title("training and dev loss")
    ax_wer.set_xlabel("updates")
    ax_wer.set_ylabel("dev error rate (%)")
    ax_wer.set_title("dev WER / CER (greedy search)")
    for ax in (ax_loss, ax_wer):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    dirs = [d if d.is_absolute() else RECIPE / d for d in args.exp_dir]
    presets = args.model_preset or ["tiny"]
    if len(presets) == 1:
        presets = presets * len(dirs)
    if len(presets) != len(dirs):
        raise SystemExit(f"{len(dirs)} --exp-dir but {len(presets)} --model-preset; give one or one each")
    labels = args.label or [str(d) for d in args.exp_dir]
    if len(labels) != len(dirs):
        raise SystemExit(f"{len(dirs)} --exp-dir but {len(labels)} --label")
    runs = []
    for d, preset, label in zip(dirs, presets, labels):
        if not d.is_dir():
            raise SystemExit(f"--exp-dir {d}: no such directory")
        rows = curve(args, d, preset)
        if not rows:
            raise SystemExit(f"{d}: no checkpoint-*.pt or epoch-*.pt (N >= 1) to decode")
        write_tsv(d / "learning_curve.tsv", rows)
        train, valid = read_losses(d)
        runs.append((label, rows, train, valid))
        logging.info(f"{label}: {len(rows)} points, {d / 'learning_curve.tsv'}")
    png = args.png if args.png.is_absolute() else RECIPE / args.png
    plot(runs, png, args.title)
    logging.info(f"Wrote {png}")


if __name__ == "__main__":
    main()

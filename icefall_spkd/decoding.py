"""Helpers behind ``spkd_transducer/decode.py``, ``export.py`` and ``pretrained.py``.

- :func:`add_averaging_arguments` / :func:`load_averaged_weights`: icefall's
  ``--epoch/--iter/--avg/--use-averaged-model`` rules for choosing and
  averaging checkpoints (``--use-averaged-model`` is true by default, as in
  icefall).
- :class:`TokenTable` / :func:`load_vocabulary`: ``--tokens
  data/lang_bpe_<N>/tokens.txt`` (icefall's current convention) or, still
  accepted, ``--bpe-model``.
- :func:`decode_one_batch` / :func:`decode_dataset`: run the encoder and a
  search method over a DataLoader.
- :func:`save_results`: write ``recogs-*``, ``errs-*`` and ``wer-summary-*``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from icefall_spkd.checkpoint import (
    CheckpointError,
    _torch_load,
    average_checkpoints,
    average_checkpoints_with_averaged_model,
    find_checkpoints,
    load_state_dict_strict,
)
from icefall_spkd.utils import AttributeDict, str2bool

DECODING_METHODS = ("greedy_search", "beam_search", "modified_beam_search")


def add_averaging_arguments(parser: argparse.ArgumentParser) -> None:
    """``--epoch``, ``--iter``, ``--avg``, ``--use-averaged-model``, ``--exp-dir`` and ``--bpe-model``.

    ``--tokens`` is added by :func:`add_tokens_argument` (scripts that read a
    token table their own way add their own).
    """
    g = parser.add_argument_group("Checkpoint selection")
    g.add_argument("--epoch", type=int, default=30, help="Use the model after this epoch (1-based).")
    g.add_argument(
        "--iter",
        type=int,
        default=0,
        help="If > 0, use checkpoint-<iter>.pt (and older ones for --avg) instead of --epoch.",
    )
    g.add_argument(
        "--avg",
        type=int,
        default=9,
        help="Number of checkpoints to average, ending at --epoch (or --iter).",
    )
    g.add_argument(
        "--use-averaged-model",
        type=str2bool,
        default=True,
        help="Use the running-average models stored in the checkpoints: the mean model over "
        "the epochs (iterations) from epoch-(E-avg) (excluded) to epoch-E, computed from those "
        "two files only; needs --epoch > --avg. false: the plain mean of the --avg files "
        "ending at --epoch.",
    )
    g.add_argument("--exp-dir", type=Path, default=Path("spkd_transducer/exp"))
    g.add_argument(
        "--bpe-model",
        type=str,
        default=None,
        help="Still accepted instead of --tokens: the sentencepiece model of the same directory "
        "(used when given).",
    )


def add_tokens_argument(parser: argparse.ArgumentParser) -> None:
    """``--tokens data/lang_bpe_500/tokens.txt`` (icefall's convention; see :func:`load_vocabulary`)."""
    parser.add_argument(
        "--tokens",
        type=str,
        default="data/lang_bpe_500/tokens.txt",
        help="Token table ('<symbol> <id>' per line, <blk> = 0), e.g. data/lang_bpe_500/tokens.txt.",
    )


class TokenTable:
    """``tokens.txt`` (``<symbol> <id>`` per line): id -> symbol, and BPE ids -> text.

    Text is made as icefall does: the symbols joined, ``▁`` turned into a
    space, and the spaces normalised. ``vocab_size`` is the largest id + 1.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(
                f"Token table not found: {self.path} (prepare.sh stage 3 writes "
                "data/lang_bpe_<N>/tokens.txt; or pass --bpe-model)"
            )
        self.symbols: Dict[int, str] = {}
        for n, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise ValueError(f"{self.path}:{n}: expected '<symbol> <id>', got {line!r}")
            sym, i = parts[0], int(parts[1])
            if i in self.symbols:
                raise ValueError(f"{self.path}:{n}: id {i} appears twice")
            self.symbols[i] = sym
        if self.symbols.get(0) != "<blk>":
            raise ValueError(f"{self.path}: id 0 must be '<blk>' (the blank), got {self.symbols.get(0)!r}")
        self.vocab_size = max(self.symbols) + 1
        if len(self.symbols) != self.vocab_size:
            raise ValueError(f"{self.path}: ids are not 0..{self.vocab_size - 1} without gaps")

    def decode(self, ids: Sequence[int]) -> str:
        """The text of a BPE id sequence (no blanks expected)."""
        return " ".join("".join(self.symbols[int(i)] for i in ids).replace("▁", " ").split())


def load_vocabulary(params: AttributeDict) -> Any:
    """``--bpe-model`` when given, else ``--tokens``; sets ``params.vocab_size`` and ``blank_id``.

    Returns an object with ``decode(ids) -> str`` (a SentencePieceProcessor or
    a :class:`TokenTable`).
    """
    if params.get("bpe_model"):
        from icefall_spkd.training import load_bpe

        return load_bpe(params)
    table = TokenTable(params.tokens)
    params.vocab_size = table.vocab_size
    params.blank_id = 0
    return table


def _pieces(sp: Any) -> List[str]:
    """The text of every token id of a SentencePieceProcessor or a :class:`TokenTable`."""
    if isinstance(sp, TokenTable):
        return [sp.symbols[i] for i in range(sp.vocab_size)]
    return [sp.id_to_piece(i) for i in range(sp.get_piece_size())]


def load_fusion_lm(params: AttributeDict, sp: Any = None) -> Optional[Any]:
    """The shallow-fusion LM of ``--lm-path``, checked against the vocabulary, or ``None``.

    ``--lm-path`` is a token n-gram (``local/train_token_lm.py``) or a word
    n-gram (``local/train_word_lm.py``). A word n-gram is scored over the
    word pieces by prefix look-ahead
    (:class:`icefall_spkd.word_lm.WordPieceLookaheadLm`), which spells only
    its own words, so ``--lm-lexicon`` is refused with it. With a token LM,
    ``--lm-lexicon FILE`` (whitespace-separated words, e.g. the training
    transcripts) wraps it in a
    :class:`icefall_spkd.lexicon.LexiconConstrainedLm` over those words. Both
    need ``sp`` (the vocabulary of :func:`load_vocabulary`). Call after
    :func:`load_vocabulary` (it needs ``params.vocab_size``).
    """
    if not params.get("lm_path") or params.get("lm_scale", 0.0) == 0.0:
        return None
    from icefall_spkd.word_lm import WordNgramLm, WordPieceLookaheadLm, load_ngram_lm

    try:
        lm = load_ngram_lm(params.lm_path)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(str(e)) from None
    if isinstance(lm, WordNgramLm):
        if params.get("lm_lexicon"):
            raise SystemExit(
                f"{params.lm_path} is a word LM: it spells only its own words; drop --lm-lexicon"
            )
        return WordPieceLookaheadLm(lm, _pieces(sp), blank_id=params.blank_id)
    if lm.vocab_size != params.vocab_size:
        raise SystemExit(
            f"{params.lm_path}: LM over {lm.vocab_size} tokens, the model has {params.vocab_size}; "
            "train the LM with the model's --bpe-model"
        )
    if params.get("lm_lexicon"):
        from icefall_spkd.lexicon import LexiconConstrainedLm

        path = Path(params.lm_lexicon)
        if not path.is_file():
            raise SystemExit(f"{path}: no such lexicon file (--lm-lexicon: words of the training text)")
        words = path.read_text(encoding="utf-8").split()
        if not words:
            raise SystemExit(f"{path}: the lexicon file has no words")
        lm = LexiconConstrainedLm(lm, _pieces(sp), words, blank_id=params.blank_id)
    return lm


def decoding_plan(params: AttributeDict, known_sets: Sequence[str]) -> Tuple[List[str], str, str]:
    """Check decode.py's options; return ``(test_sets, file suffix, results key)``.

    ``--test-sets`` items may be space- or comma-separated; each must be in
    ``known_sets``. The suffix names the result files (averaging, then the beam
    size or ``--max-sym-per-frame`` > 1); the key labels the setting in them.
    Bad options exit with a one-line message.
    """
    test_sets = [s for item in params.test_sets for s in item.split(",") if s]
    for s in test_sets:
        if s not in known_sets:
            raise SystemExit(f"Unknown test set {s!r} in --test-sets; use one of {list(known_sets)}")
    if params.max_sym_per_frame < 1:
        raise SystemExit(f"--max-sym-per-frame must be >= 1, got {params.max_sym_per_frame}")
    suffix, key = averaging_suffix(params), "greedy_search"
    if params.decoding_method in ("beam_search", "modified_beam_search"):
        suffix += f"-beam-size-{params.beam_size}"
        key = f"beam_size_{params.beam_size}"
    elif params.max_sym_per_frame > 1:
        suffix += f"-max-sym-per-frame-{params.max_sym_per_frame}"
    has_lm = bool(params.get("lm_path")) and params.get("lm_scale", 0.0) != 0.0
    if params.get("ilm_scale", 0.0) and not has_lm:
        raise SystemExit("--ilm-scale needs an external LM: give --lm-path and a non-zero --lm-scale")
    if has_lm:
        if params.decoding_method != "modified_beam_search":
            raise SystemExit(
                f"--lm-path works with modified_beam_search only, not {params.decoding_method}"
            )
        from icefall_spkd.word_lm import is_word_lm_file

        if is_word_lm_file(params.lm_path):  # not to overwrite a token LM's results
            suffix += "-word"
            key += "_word"
        suffix += f"-lm-scale-{params.lm_scale}"
        key += f"_lm_scale_{params.lm_scale}"
        if params.get("lm_token_bonus", 0.0):
            suffix += f"-token-bonus-{params.lm_token_bonus}"
            key += f"_token_bonus_{params.lm_token_bonus}"
        if params.get("ilm_scale", 0.0):
            suffix += f"-ilm-scale-{params.ilm_scale}"
            key += f"_ilm_scale_{params.ilm_scale}"
        if params.get("lm_lexicon"):
            suffix += "-lexicon"
            key += "_lexicon"
    return test_sets, suffix, key


def averaging_suffix(params: AttributeDict) -> str:
    """``epoch-N-avg-K`` or ``iter-N-avg-K``, plus ``-use-averaged-model``."""
    s = f"iter-{params.iter}-avg-{params.avg}" if params.iter > 0 else f"epoch-{params.epoch}-avg-{params.avg}"
    if params.use_averaged_model:
        s += "-use-averaged-model"
    return s


def load_averaged_weights(params: AttributeDict) -> Dict[str, torch.Tensor]:
    """The state dict chosen by the averaging options (see :func:`add_averaging_arguments`).

    Without ``--use-averaged-model``: the plain mean of the ``model`` entries of
    ``epoch-(E-avg+1) .. epoch-E`` (or the ``avg`` newest ``checkpoint-*.pt`` up
    to ``--iter``). With it: the mean over the interval between
    ``epoch-(E-avg)`` and ``epoch-E`` (or between the (avg+1)-th newest and the
    newest checkpoint) computed from their running averages.
    """
    exp_dir = Path(params.exp_dir)
    if params.avg < 1:
        raise ValueError(f"--avg must be >= 1, got {params.avg}")
    if params.iter > 0:
        need = params.avg + 1 if params.use_averaged_model else params.avg
        files = find_checkpoints(exp_dir, iteration=-params.iter)[:need]
        if len(files) < need:
            raise CheckpointError(
                f"Need {need} checkpoint-*.pt files at or before iteration {params.iter} in "
                f"{exp_dir} for --avg {params.avg}"
                + (" with --use-averaged-model" if params.use_averaged_model else "")
                + f", found {len(files)}: {files}"
            )
        if params.use_averaged_model:
            logging.info(f"Averaging (running averages) between {files[-1]} and {files[0]}")
            return average_checkpoints_with_averaged_model(files[-1], files[0])
        logging.info(f"Averaging {files}")
        return average_checkpoints(files)

    if params.use_averaged_model:
        start = params.epoch - params.avg
        if start < 1:
            raise ValueError(
                f"--use-averaged-model true (the default) needs --epoch > --avg (epoch-{start}.pt "
                f"is the start point), got --epoch {params.epoch} --avg {params.avg}; lower --avg "
                "or pass --use-averaged-model false"
            )
        f_start = exp_dir / f"epoch-{start}.pt"
        f_end = exp_dir / f"epoch-{params.epoch}.pt"
        logging.info(f"Averaging (running averages) between {f_start} and {f_end}")
        return average_checkpoints_with_averaged_model(f_start, f_end)

    # As icefall: epochs before the first are left out of the average.
    first = max(1, params.epoch - params.avg + 1)
    if first > params.epoch - params.avg + 1:
        logging.warning(
            f"--epoch {params.epoch} --avg {params.avg}: only epochs {first}..{params.epoch} exist"
        )
    files = [exp_dir / f"epoch-{e}.pt" for e in range(first, params.epoch + 1)]
    logging.info(f"Averaging {[str(f) for f in files]}")
    return average_checkpoints(files)


def model_flag_names() -> List[str]:
    """``dest`` names of the options :func:`~icefall_spkd.models.presets.add_model_arguments` adds."""
    from icefall_spkd.models.presets import add_model_arguments

    p = argparse.ArgumentParser(add_help=False)
    add_model_arguments(p)
    return [a.dest for a in p._actions]


def explicit_model_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Dict[str, Any]:
    """The model options of ``args`` whose value differs from ``parser``'s default (given by the user)."""
    return {
        k: getattr(args, k)
        for k in model_flag_names()
        if hasattr(args, k) and getattr(args, k) != parser.get_default(k)
    }


def config_checkpoint(params: AttributeDict) -> Path:
    """The newest checkpoint that ``--epoch``/``--iter`` select (its stored model config is used)."""
    exp_dir = Path(params.exp_dir)
    if params.iter > 0:
        files = find_checkpoints(exp_dir, iteration=-params.iter)
        if not files:
            raise FileNotFoundError(f"no checkpoint-*.pt at or before iteration {params.iter} in {exp_dir}")
        return Path(files[0])
    return exp_dir / f"epoch-{params.epoch}.pt"


def stored_model_params(
    filename: str | Path, explicit: Optional[Dict[str, Any]] = None
) -> Optional[Dict[str, Any]]:
    """The model hyper-parameters stored in a checkpoint (``model_params``, or ``params`` of
    an exported ``pretrained.pt``); None for a file of an older layout that has neither.

    ``explicit``: model flags given on the command line; one that contradicts
    the stored value is an error (the stored architecture is the one the
    weights belong to), one that agrees is accepted, one the file does not
    record (such as ``--model-preset`` once the dimensions are stored) is ignored
    with a warning.
    """
    ckpt = _torch_load(filename)
    stored = ckpt.get("model_params")
    if not isinstance(stored, dict) and isinstance(ckpt.get("params"), dict):
        stored = ckpt["params"]
    if not isinstance(stored, dict) or "encoder_type" not in stored:
        return None
    for k, v in (explicit or {}).items():
        if k not in stored:
            logging.warning(f"--{k.replace('_', '-')} {v} ignored: {filename} stores the architecture")
        elif str(stored[k]) != str(v):
            flag = "--" + k.replace("_", "-")
            raise ValueError(
                f"{flag} {v} contradicts {filename}, which was trained with {flag} {stored[k]}; "
                f"drop {flag} (the model flags are read from the checkpoint)"
            )
    return dict(stored)


def build_decoding_model(params: AttributeDict, explicit: Optional[Dict[str, Any]] = None) -> nn.Module:
    """The model of the checkpoints ``--epoch``/``--iter`` select, built from the
    hyper-parameters stored in them (the command's model flags for files without
    any); ``params.vocab_size`` (from ``--tokens``/``--bpe-model``) must match."""
    from icefall_spkd.models.presets import build_model

    stored = stored_model_params(config_checkpoint(params), explicit)
    if stored is None:
        logging.info("The checkpoint stores no model hyper-parameters; using the model flags")
        return build_model(params)
    if int(stored.get("vocab_size", params.vocab_size)) != int(params.vocab_size):
        raise ValueError(
            f"{config_checkpoint(params)} was trained with vocab_size={stored['vocab_size']} but "
            f"the token table has {params.vocab_size}: pass the --tokens/--bpe-model of its training"
        )
    logging.info(f"Model hyper-parameters from {config_checkpoint(params)}: {stored}")
    params.update({k: v for k, v in stored.items() if k not in ("vocab_size", "blank_id")})
    return build_model({**stored, "vocab_size": params.vocab_size, "blank_id": params.blank_id})


def load_model_weights(model: nn.Module, params: AttributeDict) -> None:
    """Average as :func:`load_averaged_weights` says and load strictly into ``model``."""
    sd = load_averaged_weights(params)
    load_state_dict_strict(model, sd, strict=True, what=f"averaged checkpoints ({averaging_suffix(params)})")


def analysis_params(args: argparse.Namespace, exp_dir: Any) -> Tuple[AttributeDict, str]:
    """Params of a script that loads a run's averaged model without decoding
    (``local/kd_sample_overlap.py``, ``local/internal_lm_ppl.py``), and the
    averaging suffix (``epoch-2-avg-1-use-averaged-model``) that names its files."""
    from icefall_spkd.training import get_params

    params = get_params()
    params.update(vars(args))
    params.exp_dir = Path(exp_dir)
    params.update(test_sets=[], decoding_method="greedy_search", max_sym_per_frame=1)
    _, suffix, _ = decoding_plan(params, ())
    return params, suffix


def load_analysis_model(
    parser: argparse.ArgumentParser, args: argparse.Namespace, params: AttributeDict
) -> Tuple[Any, nn.Module]:
    """The vocabulary and the averaged model (eval mode) that ``params`` (from
    :func:`analysis_params`) selects, built as decode.py builds it."""
    sp = load_vocabulary(params)
    model = build_decoding_model(params, explicit_model_flags(parser, args))
    load_model_weights(model, params)
    model.eval()
    return sp, model


def input_order(batch: Dict[str, Any]) -> Tuple[torch.Tensor, List[str], List[str]]:
    """Feature lengths, reference texts and cut ids in the row order of ``batch['inputs']``."""
    sup = batch["supervisions"]
    n = batch["inputs"].size(0)
    idx = torch.as_tensor(sup.get("sequence_idx", torch.arange(n)), dtype=torch.int64).tolist()
    lens = torch.full((n,), batch["inputs"].size(1), dtype=torch.int64)
    if sup.get("num_frames") is not None:
        lens[idx] = torch.as_tensor(sup["num_frames"], dtype=torch.int64)
    texts = [""] * n
    ids = [f"utt-{i}" for i in range(n)]
    cuts = sup.get("cut")
    for j, i in enumerate(idx):
        texts[i] = sup["text"][j]
        if cuts is not None:
            ids[i] = cuts[j].id
    return lens, texts, ids


@torch.no_grad()
def decode_one_batch(
    params: AttributeDict, model: nn.Module, sp: Any, batch: Dict[str, Any]
) -> Tuple[List[str], List[str], List[str]]:
    """Decode a batch; returns ``(cut_ids, ref_texts, hyp_texts)`` in input order.

    ``sp``: anything with ``decode(ids) -> str`` (see :func:`load_vocabulary`).
    ``params.max_sym_per_frame`` (default 1) applies to greedy_search;
    ``params.lm`` (a token LM, see :func:`load_fusion_lm`), ``params.lm_scale``
    ``params.lm_token_bonus`` and ``params.ilm_scale`` to modified_beam_search
    (shallow fusion, with the internal LM subtracted at ``ilm_scale``).
    """
    from icefall_spkd.search import beam_search, greedy_search_batch, modified_beam_search

    device = next(model.parameters()).device
    x = batch["inputs"].to(device)
    x_lens, refs, ids = input_order(batch)
    encoder_out, encoder_out_lens = model.forward_encoder(x, x_lens.to(device))
    if params.decoding_method == "greedy_search":
        hyp_tokens = greedy_search_batch(
            model, encoder_out, encoder_out_lens, max_sym_per_frame=int(params.get("max_sym_per_frame", 1))
        )
    elif params.decoding_method == "beam_search":
        hyp_tokens = beam_search(model, encoder_out, encoder_out_lens, beam=params.beam_size)
    elif params.decoding_method == "modified_beam_search":
        hyp_tokens = modified_beam_search(
            model,
            encoder_out,
            encoder_out_lens,
            beam=params.beam_size,
            lm=params.get("lm"),
            lm_scale=float(params.get("lm_scale", 0.0)),
            lm_token_bonus=float(params.get("lm_token_bonus", 0.0)),
            ilm_scale=float(params.get("ilm_scale", 0.0)),
        )
    else:
        raise ValueError(
            f"Unknown --decoding-method {params.decoding_method!r}; use one of {DECODING_METHODS}"
        )
    hyps = [sp.decode(list(t)) for t in hyp_tokens]
    return ids, refs, hyps


def decode_dataset(
    params: AttributeDict,
    model: nn.Module,
    sp: Any,
    dl: Any,
    desc: str = "",
) -> List[Tuple[str, List[str], List[str]]]:
    """Decode every batch of ``dl`` with a progress bar; ``(cut_id, ref_words, hyp_words)``."""
    from tqdm import tqdm

    results: List[Tuple[str, List[str], List[str]]] = []
    for batch in tqdm(dl, desc=desc, unit="batch", leave=False):
        ids, refs, hyps = decode_one_batch(params, model, sp, batch)
        results.extend((i, r.split(), h.split()) for i, r, h in zip(ids, refs, hyps))
    return results


def save_results(
    params: AttributeDict,
    test_set: str,
    results: Sequence[Tuple[str, List[str], List[str]]],
    out_dir: Path,
    suffix: str,
    key: str,
) -> Tuple[float, Dict[str, Path]]:
    """Write recogs/errs/wer-summary for one test set; returns ``(wer, paths)``."""
    from icefall_spkd.wer import write_error_stats, write_recogs, write_wer_summary

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "recogs": out_dir / f"recogs-{test_set}-{suffix}.txt",
        "errs": out_dir / f"errs-{test_set}-{suffix}.txt",
        "wer_summary": out_dir / f"wer-summary-{test_set}-{suffix}.txt",
    }
    write_recogs(paths["recogs"], results)
    wer = write_error_stats(paths["errs"], f"{test_set}-{key}", results)
    write_wer_summary(paths["wer_summary"], {key: wer})
    for name, p in paths.items():
        logging.info(f"Wrote {name} to {p}")
    return wer, paths


def model_params_for_export(params: AttributeDict, exclude: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Plain-valued params (model hyper-parameters included) to store in ``pretrained.pt``."""
    skip = set(exclude or ())
    out: Dict[str, Any] = {}
    for k, v in params.items():
        if k in skip:
            continue
        if isinstance(v, (int, float, str, bool, type(None))):
            out[k] = v
        elif isinstance(v, Path):
            out[k] = str(v)
    return out

"""ONNX export of a transducer in the layout sherpa-onnx's offline transducer reads.

Three files, as icefall's ``export-onnx.py`` writes them:

- ``encoder.onnx``: ``x (N, T, 80) float32, x_lens (N,) int64 ->
  encoder_out (N, T', joiner_dim), encoder_out_lens (N,) int64``. It runs
  ``model.forward_encoder`` (so any model-specific input processing, such as
  the Conformer's global CMVN, is inside) followed by the joiner's
  ``encoder_proj``. Metadata: ``model_type`` (``conformer`` or
  ``zipformer2``, which sherpa-onnx maps to its icefall transducer),
  ``version``, ``model_author``, ``comment``, plus ``subsampling_factor`` and
  ``feature_dim``.
- ``decoder.onnx``: ``y (N, context_size) int64 -> decoder_out (N, joiner_dim)``,
  the stateless decoder (``need_pad=False``) followed by ``decoder_proj``.
  Metadata ``vocab_size`` and ``context_size`` (sherpa-onnx requires both).
  sherpa-onnx starts every hypothesis from the context ``[-1, ..., -1, 0]``;
  the decoder embeds negative ids as zeros, like blank.
- ``joiner.onnx``: ``encoder_out (N, joiner_dim), decoder_out (N, joiner_dim)
  -> logit (N, vocab_size)`` = ``output_linear(tanh(encoder_out + decoder_out))``.
  Metadata ``joiner_dim``.

plus ``tokens.txt`` and int8 copies ``*.int8.onnx`` made by onnxruntime's
dynamic quantisation (weights of ``MatMul`` and ``Gemm`` stored as int8,
activations quantised on the fly).

sherpa-onnx's greedy search (and :class:`OnnxTransducer` here, which follows
it) differs from :func:`icefall_spkd.search.greedy_search_batch` in one
documented way: an arg-max of ``<unk>`` is treated like blank (nothing is
emitted and the decoder state is kept). Blank must be id 0.

The export uses the TorchScript-based exporter (``dynamo=False``), which
traces the module with dynamic ``N`` and ``T``; any encoder whose forward
is traceable (tensor shape arithmetic, no Python branches on values) exports
with no special case.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from icefall_spkd.checkpoint import CheckpointError, _torch_load

PathLike = Union[str, Path]

#: ONNX opset of the exported graphs (LayerNormalization is native from 17).
OPSET = 17
#: Log of the feature value sherpa-onnx pads batches with (log 1e-10).
FEATURE_PAD = -23.025850929940457


class ExportError(ValueError):
    """Bad input to the exporter; the message is one line naming the file."""


# --------------------------------------------------------------------------- #
# Wrappers that fix the interface sherpa-onnx expects
# --------------------------------------------------------------------------- #
class OnnxEncoder(nn.Module):
    """``model.forward_encoder`` then ``joiner.encoder_proj``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, x_lens: Tensor) -> Tuple[Tensor, Tensor]:
        encoder_out, encoder_out_lens = self.model.forward_encoder(x, x_lens)
        return self.model.joiner.encoder_proj(encoder_out), encoder_out_lens.to(torch.int64)


class OnnxDecoder(nn.Module):
    """Stateless decoder on ``(N, context_size)`` contexts, then ``joiner.decoder_proj``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.decoder = model.decoder
        self.decoder_proj = model.joiner.decoder_proj

    def forward(self, y: Tensor) -> Tensor:
        return self.decoder_proj(self.decoder(y, need_pad=False).squeeze(1))


class OnnxJoiner(nn.Module):
    """``output_linear(tanh(encoder_out + decoder_out))`` on projected inputs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.output_linear = model.joiner.output_linear

    def forward(self, encoder_out: Tensor, decoder_out: Tensor) -> Tensor:
        return self.output_linear(torch.tanh(encoder_out + decoder_out))


# --------------------------------------------------------------------------- #
# Tokens
# --------------------------------------------------------------------------- #
def read_tokens(path: PathLike) -> List[str]:
    """``tokens.txt`` ("<symbol> <id>" per line) as a list indexed by id.

    Raises:
      ExportError: missing file, a malformed line, or ids that are not ``0..n-1``.
    """
    p = Path(path)
    if not p.is_file():
        raise ExportError(f"{p}: tokens file not found; give data/lang_bpe_<N>/tokens.txt")
    table: Dict[int, str] = {}
    for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise ExportError(
                f"{p}:{lineno}: expected '<symbol> <id>', got {line!r}; give the tokens.txt "
                "written by local/train_bpe_model.py"
            )
        table[int(parts[1])] = parts[0]
    if sorted(table) != list(range(len(table))):
        raise ExportError(f"{p}: token ids are not 0..{len(table) - 1}; regenerate tokens.txt")
    return [table[i] for i in range(len(table))]


def check_tokens(tokens: Sequence[str], tokens_path: PathLike, vocab_size: int, blank_id: int,
                 model_what: str) -> None:
    """Raise :class:`ExportError` unless ``tokens`` fits a model of ``vocab_size`` with blank 0."""
    if len(tokens) != vocab_size:
        raise ExportError(
            f"{tokens_path}: has {len(tokens)} tokens but {model_what} has vocab_size="
            f"{vocab_size}; give the tokens.txt of the lang dir the model was trained with "
            f"(data/lang_bpe_{vocab_size}/tokens.txt)"
        )
    if blank_id != 0 or tokens[0] != "<blk>":
        raise ExportError(
            f"{tokens_path}: id 0 is {tokens[0]!r} and the model's blank is {blank_id}; "
            "sherpa-onnx needs blank '<blk>' at id 0 (train with local/train_bpe_model.py)"
        )


# --------------------------------------------------------------------------- #
# Models from checkpoints
# --------------------------------------------------------------------------- #
_KIND_HINT = (
    "give pretrained.pt from spkd_transducer/export.py, or epoch-N.pt / checkpoint-N.pt "
    "from train.py (or use --exp-dir --epoch --avg)"
)


def _checkpoint_params(ckpt: Mapping[str, Any]) -> Mapping[str, Any]:
    """The hyper-parameters of a checkpoint: ``params`` (pretrained.pt) or the top level."""
    params = ckpt.get("params")
    return params if isinstance(params, Mapping) else ckpt


def build_model_from_params(params: Mapping[str, Any], what: PathLike) -> nn.Module:
    """``build_model(params)``; any failure becomes a one-line :class:`CheckpointError`."""
    from icefall_spkd.models.presets import build_model

    try:
        return build_model(params)
    except Exception as e:  # ValueError / TypeError / KeyError from a foreign file
        msg = " ".join(str(e).split())
        raise CheckpointError(
            f"{what}: cannot rebuild a transducer from its stored hyper-parameters ({msg}); "
            f"{_KIND_HINT}"
        ) from None


def load_weights(model: nn.Module, state_dict: Any, what: PathLike) -> None:
    """Strict load with a one-line :class:`CheckpointError` naming ``what``."""
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{what}: its 'model' entry is not a state dict; {_KIND_HINT}")
    sd = dict(state_dict)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    wrong = sorted(k for k in set(own) & set(sd) if own[k].shape != sd[k].shape)
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{what}: its weights do not fit the model its hyper-parameters describe "
            f"({len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} of another "
            f"shape, e.g. {(missing + unexpected + wrong)[:3]}); {_KIND_HINT}"
        )
    model.load_state_dict(sd, strict=True)


def load_model_from_checkpoint(path: PathLike) -> nn.Module:
    """A transducer from ``pretrained.pt`` or ``epoch-N.pt``/``checkpoint-N.pt``, in eval mode.

    Raises:
      CheckpointError: one line naming ``path`` when it is not such a file.
    """
    try:
        ckpt = _torch_load(path)
    except CheckpointError as e:  # not a torch file, or not a dict
        msg = " ".join(str(e).split())
        raise CheckpointError(f"{msg}; {_KIND_HINT}") from None
    if not isinstance(ckpt.get("model"), Mapping):
        raise CheckpointError(f"{path}: has no 'model' state dict; {_KIND_HINT}")
    model = build_model_from_params(_checkpoint_params(ckpt), path)
    load_weights(model, ckpt["model"], path)
    return model.eval()


def load_averaged_model(params: Any) -> nn.Module:
    """icefall's ``--exp-dir --epoch/--iter --avg --use-averaged-model`` choice.

    Hyper-parameters come from the newest file of the range (``epoch-<epoch>.pt``
    or the newest ``checkpoint-*.pt`` at or before ``--iter``); the weights
    from :func:`icefall_spkd.decoding.load_averaged_weights`.
    """
    from icefall_spkd.checkpoint import find_checkpoints
    from icefall_spkd.decoding import averaging_suffix, load_averaged_weights

    exp_dir = Path(params.exp_dir)
    if params.iter > 0:
        files = find_checkpoints(exp_dir, iteration=-params.iter)
        if not files:
            raise CheckpointError(f"{exp_dir}: no checkpoint-*.pt at or before --iter {params.iter}")
        newest = Path(files[0])
    else:
        newest = exp_dir / f"epoch-{params.epoch}.pt"
    ckpt = _torch_load(newest)
    model = build_model_from_params(_checkpoint_params(ckpt), newest)
    sd = load_averaged_weights(params)
    load_weights(model, sd, f"{exp_dir} ({averaging_suffix(params)})")
    return model.eval()


# --------------------------------------------------------------------------- #
# Export
# --------------------------------------------------------------------------- #
def encoder_model_type(model: nn.Module) -> str:
    """``zipformer2`` for a Zipformer encoder, else ``conformer`` (sherpa-onnx's names)."""
    name = type(model.encoder).__name__.lower()
    return "zipformer2" if "zipformer" in name else "conformer"


def add_meta_data(filename: PathLike, meta_data: Mapping[str, str]) -> None:
    """Write string key/value metadata into an ONNX file in place."""
    import onnx

    model = onnx.load(str(filename))
    for key, value in meta_data.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.save(model, str(filename))


def read_meta_data(filename: PathLike) -> Dict[str, str]:
    """The custom metadata of an ONNX file (as onnxruntime reports it)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(filename), providers=["CPUExecutionProvider"])
    return dict(sess.get_modelmeta().custom_metadata_map)


def _export(module: nn.Module, args: Tuple[Tensor, ...], filename: Path, input_names: List[str],
            output_names: List[str], dynamic_axes: Dict[str, Dict[int, str]]) -> None:
    import warnings

    module.eval()  # a fresh wrapper is in training mode, and the exporter restores that mode
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(
            module, args, str(filename), dynamo=False, opset_version=OPSET,
            input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes,
        )


def compact_names(filename: PathLike) -> None:
    """Rename a graph's nodes and internal tensors to short names (``n12``, ``t34``, ``w5``).

    Graph inputs, outputs and metadata keep their names, so the model's
    interface is unchanged. The exporter's and quantiser's scope-path names
    are a sizeable share of a small model's file (about 0.2 MB of the tiny
    student's int8 encoder).
    """
    import onnx

    model = onnx.load(str(filename))
    g = model.graph
    keep = {v.name for v in g.input} | {v.name for v in g.output}
    renamed: Dict[str, str] = {}
    for j, t in enumerate(g.initializer):
        if t.name not in keep:
            renamed[t.name] = f"w{j}"
            t.name = renamed[t.name]

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        if name not in renamed:
            renamed[name] = f"t{len(renamed)}"
        return renamed[name]

    for i, node in enumerate(g.node):
        node.name = f"n{i}"
        node.doc_string = ""
        for k, name in enumerate(node.input):
            node.input[k] = short(name)
        for k, name in enumerate(node.output):
            node.output[k] = short(name)
    del g.value_info[:]
    onnx.checker.check_model(model)
    onnx.save(model, str(filename))


def quantize_int8(src: PathLike, dst: PathLike) -> None:
    """onnxruntime dynamic quantisation (int8 weights of ``MatMul`` and ``Gemm``), names compacted."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        model_input=str(src), model_output=str(dst),
        op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8,
    )
    compact_names(dst)


@torch.no_grad()
def export_onnx(model: nn.Module, out_dir: PathLike, tokens: Sequence[str],
                comment: str = "icefall-spkd", int8: bool = True) -> Dict[str, Path]:
    """Export ``model`` to ``out_dir`` (see the module docstring); returns the written paths.

    Args:
      model: a transducer following the model contract (``forward_encoder``,
        ``decoder``, ``joiner``); it is moved to CPU and exported in eval mode
        (and left in eval mode).
      out_dir: created if needed.
      tokens: the token symbols by id (written to ``tokens.txt``).
      comment: the encoder's ``comment`` metadata.
      int8: also write the ``*.int8.onnx`` copies.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.to("cpu").eval()
    decoder = model.decoder
    feature_dim = int(getattr(model, "model_config", {}).get("feature_dim", 80))
    joiner_dim = model.joiner.output_linear.weight.shape[1]
    paths = {k: out / f"{k}.onnx" for k in ("encoder", "decoder", "joiner")}

    x = torch.zeros(2, 120, feature_dim)
    x_lens = torch.tensor([120, 90], dtype=torch.int64)
    _export(OnnxEncoder(model), (x, x_lens), paths["encoder"], ["x", "x_lens"],
            ["encoder_out", "encoder_out_lens"],
            {"x": {0: "N", 1: "T"}, "x_lens": {0: "N"}, "encoder_out": {0: "N", 1: "T"},
             "encoder_out_lens": {0: "N"}})
    add_meta_data(paths["encoder"], {
        "model_type": encoder_model_type(model), "version": "1", "model_author": "icefall-spkd",
        "comment": comment, "subsampling_factor": "4", "feature_dim": str(feature_dim),
    })

    y = torch.zeros(3, decoder.context_size, dtype=torch.int64)
    _export(OnnxDecoder(model), (y,), paths["decoder"], ["y"], ["decoder_out"],
            {"y": {0: "N"}, "decoder_out": {0: "N"}})
    add_meta_data(paths["decoder"], {"context_size": str(decoder.context_size),
                                     "vocab_size": str(decoder.vocab_size)})

    e, d = torch.rand(4, joiner_dim), torch.rand(4, joiner_dim)
    _export(OnnxJoiner(model), (e, d), paths["joiner"], ["encoder_out", "decoder_out"], ["logit"],
            {"encoder_out": {0: "N"}, "decoder_out": {0: "N"}, "logit": {0: "N"}})
    model.eval()
    add_meta_data(paths["joiner"], {"joiner_dim": str(joiner_dim)})

    paths["tokens"] = out / "tokens.txt"
    paths["tokens"].write_text("".join(f"{s} {i}\n" for i, s in enumerate(tokens)), encoding="utf-8")
    if int8:
        for k in ("encoder", "decoder", "joiner"):
            paths[f"{k}_int8"] = out / f"{k}.int8.onnx"
            quantize_int8(paths[k], paths[f"{k}_int8"])
    for k, p in paths.items():
        logging.info(f"Wrote {k}: {p} ({p.stat().st_size / 1e6:.3f} MB)")
    return paths


# --------------------------------------------------------------------------- #
# Inference with onnxruntime alone
# --------------------------------------------------------------------------- #
class OnnxTransducer:
    """The three exported files in onnxruntime sessions, with sherpa-onnx's greedy search.

    Args:
      encoder, decoder, joiner: ONNX files written by :func:`export_onnx`.
      num_threads: intra- and inter-op threads of each session.
      unk_id: id treated like blank by the search (sherpa-onnx's rule), or None.
    """

    def __init__(self, encoder: PathLike, decoder: PathLike, joiner: PathLike,
                 num_threads: int = 1, unk_id: Optional[int] = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = num_threads
        opts.inter_op_num_threads = num_threads
        opts.log_severity_level = 3

        def session(p: PathLike) -> Any:
            if not Path(p).is_file():
                raise ExportError(f"{p}: ONNX file not found; run spkd_transducer/export-onnx.py first")
            return ort.InferenceSession(str(p), sess_options=opts, providers=["CPUExecutionProvider"])

        self.encoder, self.decoder, self.joiner = session(encoder), session(decoder), session(joiner)
        meta = self.decoder.get_modelmeta().custom_metadata_map
        try:
            self.context_size = int(meta["context_size"])
            self.vocab_size = int(meta["vocab_size"])
        except KeyError:
            raise ExportError(f"{decoder}: no context_size/vocab_size metadata; re-export it "
                              "with spkd_transducer/export-onnx.py") from None
        self.unk_id = unk_id

    def run_encoder(self, x: np.ndarray, x_lens: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """``x`` (N, T, 80) float32, ``x_lens`` (N,) int64 -> projected encoder_out, lens."""
        out, lens = self.encoder.run(None, {"x": x.astype(np.float32), "x_lens": x_lens.astype(np.int64)})
        return out, lens

    def run_decoder(self, contexts: np.ndarray) -> np.ndarray:
        return self.decoder.run(None, {"y": contexts.astype(np.int64)})[0]

    def greedy_search(self, encoder_out: np.ndarray, encoder_out_lens: np.ndarray) -> List[List[int]]:
        """At most one symbol per frame; blank (0) and ``unk_id`` emit nothing (as sherpa-onnx)."""
        n = encoder_out.shape[0]
        lens = [int(v) for v in encoder_out_lens]
        order = sorted(range(n), key=lambda i: -lens[i])
        hyps: List[List[int]] = [[] for _ in range(n)]
        ctx = np.full((n, self.context_size), -1, dtype=np.int64)
        ctx[:, -1] = 0
        dec = self.run_decoder(ctx)
        enc = encoder_out[order]
        sorted_lens = [lens[i] for i in order]
        for t in range(max(sorted_lens, default=0)):
            active = sum(1 for v in sorted_lens if v > t)
            logits = self.joiner.run(None, {"encoder_out": enc[:active, t],
                                            "decoder_out": dec[:active]})[0]
            ys = logits.argmax(axis=-1)
            emitted = [i for i, y in enumerate(ys) if y != 0 and y != self.unk_id]
            if not emitted:
                continue
            for i in emitted:
                hyps[order[i]].append(int(ys[i]))
                ctx[i] = np.concatenate([ctx[i, 1:], [ys[i]]])
            dec[emitted] = self.run_decoder(ctx[emitted])
        return hyps

    def decode_features(self, feats: Sequence[np.ndarray]) -> List[List[int]]:
        """Greedy token ids for a list of ``(T_i, 80)`` feature matrices (one batch)."""
        x_lens = np.array([f.shape[0] for f in feats], dtype=np.int64)
        x = np.full((len(feats), int(x_lens.max()), feats[0].shape[1]), FEATURE_PAD, dtype=np.float32)
        for i, f in enumerate(feats):
            x[i, : f.shape[0]] = f
        enc, enc_lens = self.run_encoder(x, x_lens)
        return self.greedy_search(enc, enc_lens)


__all__ = [
    "ExportError",
    "OnnxDecoder",
    "OnnxEncoder",
    "OnnxJoiner",
    "OnnxTransducer",
    "add_meta_data",
    "check_tokens",
    "export_onnx",
    "load_averaged_model",
    "load_model_from_checkpoint",
    "quantize_int8",
    "read_meta_data",
    "read_tokens",
]

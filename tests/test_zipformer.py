"""The Zipformer transducer against the reference package ``zipformer==0.1.3``.

The reference (the Next-gen Kaldi team's standalone copy of icefall's
Zipformer2 ``AsrModel``) is loaded by ``zipformer_reference.py``. Checks:

* parameter counts of icefall's small / medium / large configurations equal the
  reference's (built on the meta device: no memory, no init time);
* a reference model with randomly perturbed weights, saved and loaded through
  ``from_icefall``, gives the same encoder output, decoder output and joiner
  logits (eval mode, padded batches), also for a causal chunked model and a
  CTC head;
* a mismatching state_dict raises an error naming the missing and unexpected keys;
* every scheduled value (ScheduledFloat) and every Balancer / Whiten sits at
  the same module path with the same schedule as in the reference, and the
  Balancer / Whiten gradient terms equal the reference's.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import math
import os

import pytest
import torch
from zipformer_reference import load_reference, reference_asr_model

from icefall_spkd.models import (
    IcefallLoadError,
    build_model,
    from_icefall,
    set_batch_count,
)
from icefall_spkd.models import scaling as my_scaling

REF = load_reference()  # skips this module when the reference is not installed


@contextlib.contextmanager
def _plain_reference_functions():
    """Build reference modules without ``torch.compile`` wrappers (same Python functions,
    no compile time); the reference reads K2_ONNX_EXPORT when a module is built."""
    old = os.environ.get("K2_ONNX_EXPORT")
    os.environ["K2_ONNX_EXPORT"] = "1"
    try:
        yield
    finally:
        if old is None:
            del os.environ["K2_ONNX_EXPORT"]
        else:
            os.environ["K2_ONNX_EXPORT"] = old


def _ref_model(params):
    with _plain_reference_functions():
        return reference_asr_model(params)


# icefall's published LibriSpeech configurations (zipformer/RESULTS.md).
ICEFALL_CONFIGS = {
    "zipformer-small": dict(
        num_encoder_layers="2,2,2,2,2,2",
        feedforward_dim="512,768,768,768,768,768",
        encoder_dim="192,256,256,256,256,256",
        encoder_unmasked_dim="192,192,192,192,192,192",
    ),
    "zipformer-medium": dict(),
    "zipformer-large": dict(
        num_encoder_layers="2,2,4,5,4,2",
        feedforward_dim="512,768,1536,2048,1536,768",
        encoder_dim="192,256,512,768,512,256",
        encoder_unmasked_dim="192,192,256,320,256,192",
    ),
}

# A small configuration for the numeric comparisons (all per-stack values differ).
TINY = dict(
    encoder_type="zipformer",
    num_encoder_layers="1,1,2,1,1,1",
    downsampling_factor="1,2,4,8,4,2",
    feedforward_dim="64,96,128,96,96,64",
    encoder_dim="48,64,96,64,80,48",
    encoder_unmasked_dim="32,48,64,48,48,32",
    num_heads="2,2,4,2,2,2",
    cnn_module_kernel="7,7,5,5,5,7",
    query_head_dim="8",
    value_head_dim="6",
    pos_head_dim="4",
    pos_dim=16,
    decoder_dim=32,
    joiner_dim=40,
    vocab_size=30,
    context_size=2,
    feature_dim=80,
    some_unrelated_icefall_key=123,  # ignored, as in an icefall params dict
)


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(ICEFALL_CONFIGS))
def test_parameter_counts_equal_reference(name):
    params = dict(ICEFALL_CONFIGS[name], vocab_size=500, decoder_dim=512, joiner_dim=512)
    with torch.device("meta"):
        ref = _ref_model(params)
        mine = build_model(dict(params, encoder_type="zipformer"))
        preset = build_model({"model_preset": name, "vocab_size": 500})
    assert _count(mine) == _count(ref)
    assert _count(preset) == _count(ref)
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    my_shapes = {k: tuple(v.shape) for k, v in mine.state_dict().items()}
    assert my_shapes == ref_shapes
    assert mine.model_config["encoder_type"] == "zipformer"


def _perturbed_reference(params, seed=0):
    torch.manual_seed(seed)
    ref = _ref_model(params)
    with torch.no_grad():
        for p in ref.parameters():
            # Move every parameter away from its initial value (biases start at
            # zero, scales at 0.5/1.0), so a misplaced one shows.
            p.add_(torch.randn_like(p) * (0.1 + 0.2 * p.detach().abs().mean()))
    return ref.eval()


def _load_through_file(ref, params):
    buf = io.BytesIO()
    torch.save({"model": ref.state_dict()}, buf)  # as icefall's epoch-N.pt
    buf.seek(0)
    ckpt = torch.load(buf, map_location="cpu", weights_only=True)
    return from_icefall(ckpt["model"], params).eval()


def _padded_batch(lengths, feature_dim=80, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), max(lengths), feature_dim, generator=g)
    x_lens = torch.tensor(lengths, dtype=torch.int64)
    for i, n in enumerate(lengths):
        x[i, n:] = 0.0  # padding as in a real batch
    return x, x_lens


def _compare_outputs(params, lengths, tol=1e-4):
    ref = _perturbed_reference(params)
    mine = _load_through_file(ref, params)
    x, x_lens = _padded_batch(lengths)
    with torch.no_grad():
        ref_out, ref_lens = ref.forward_encoder(x, x_lens)
        out, lens = mine.forward_encoder(x, x_lens)
    assert torch.equal(lens, ref_lens)
    assert out.shape == ref_out.shape
    valid = torch.arange(out.shape[1])[None, :] < lens[:, None]
    diff = (out - ref_out).abs()
    assert diff[valid].max().item() < tol, diff[valid].max().item()
    assert ref_out.abs().max().item() > 0.5  # a non-trivial output

    # Decoder on padded token sequences, including a negative "no token" id.
    y = torch.tensor([[0, 3, 7, 1], [0, 5, -1, 2], [0, 9, 9, 9]])[: len(lengths)]
    with torch.no_grad():
        ref_dec, dec = ref.decoder(y), mine.decoder(y)
        ref_dec1 = ref.decoder(y[:, -params["context_size"]:], need_pad=False)
        dec1 = mine.decoder(y[:, -params["context_size"]:], need_pad=False)
        ref_logits = ref.joiner(ref_out.unsqueeze(2), ref_dec.unsqueeze(1))
        logits = mine.joiner(out.unsqueeze(2), dec.unsqueeze(1))
    assert (dec - ref_dec).abs().max().item() < tol
    assert (dec1 - ref_dec1).abs().max().item() < tol
    lv = valid[:, :, None, None].expand_as(logits)
    assert (logits - ref_logits).abs()[lv].max().item() < tol
    return ref, mine, out, lens


def test_outputs_equal_reference_on_padded_batch():
    _compare_outputs(dict(TINY), lengths=[131, 100, 57])


def test_outputs_equal_reference_causal_chunked():
    params = dict(TINY, causal=True, chunk_size="16", left_context_frames="64")
    _compare_outputs(params, lengths=[140, 77])


def test_outputs_equal_reference_context_size_one():
    _compare_outputs(dict(TINY, context_size=1), lengths=[90, 61])


def test_ctc_head_equals_reference_and_torch():
    params = dict(TINY, use_ctc=True)
    ref, mine, out, lens = _compare_outputs(params, lengths=[131, 100, 57])
    assert mine.ctc_output is not None
    y_padded = torch.tensor([[3, 4, 5, 6], [7, 7, 2, 0], [1, 9, 0, 0]])
    y_lens = torch.tensor([4, 3, 2])
    with torch.no_grad():
        loss = mine.ctc_loss(out, lens, y_padded, y_lens)
        ref_loss = ref.forward_ctc(out, lens, y_padded, y_lens)
        # Independent: log-softmax of the head's linear layer, torch's CTC per utterance.
        lin = mine.ctc_output[1]
        logp = torch.log_softmax(out @ lin.weight.T + lin.bias, dim=-1)
        per_utt = [
            torch.nn.functional.ctc_loss(
                logp[b, : lens[b]].unsqueeze(1), y_padded[b : b + 1, : y_lens[b]],
                lens[b : b + 1], y_lens[b : b + 1], reduction="sum",
            )
            for b in range(3)
        ]
    assert abs(loss.item() - ref_loss.item()) < 1e-3 * abs(ref_loss.item())
    assert abs(loss.item() - sum(p.item() for p in per_utt)) < 1e-3 * abs(loss.item())


def test_ctc_loss_brute_force():
    """torch's CTC (as used by ctc_loss) against enumerating every alignment of a tiny case."""
    T, V = 5, 3
    g = torch.Generator().manual_seed(0)
    logp = torch.log_softmax(torch.randn(T, V, generator=g), dim=-1)
    target = [1, 2]

    def collapse(path):
        out = [k for k, _ in itertools.groupby(path)]
        return [k for k in out if k != 0]

    total = sum(
        math.exp(sum(logp[t, k].item() for t, k in enumerate(path)))
        for path in itertools.product(range(V), repeat=T)
        if collapse(path) == target
    )
    torch_nll = torch.nn.functional.ctc_loss(
        logp.unsqueeze(1), torch.tensor([target]), torch.tensor([T]), torch.tensor([2]),
        reduction="sum",
    )
    assert abs(torch_nll.item() + math.log(total)) < 1e-5


def test_mismatch_error_lists_missing_and_unexpected_keys():
    ref = _ref_model(TINY)
    sd = dict(ref.state_dict())
    sd.pop("encoder.encoders.0.layers.0.norm.log_scale")
    sd["encoder.not_a_module.weight"] = torch.zeros(3)
    with pytest.raises(IcefallLoadError) as e:
        from_icefall(sd, TINY)
    msg = str(e.value)
    assert "1 missing keys" in msg and "encoder.encoders.0.layers.0.norm.log_scale" in msg
    assert "1 unexpected keys" in msg and "encoder.not_a_module.weight" in msg
    # An architecture mismatch (one more layer in stack 0) names the extra layer's keys.
    with pytest.raises(IcefallLoadError, match=r"missing keys \[encoder\.encoders\.0\.layers\.1\."):
        from_icefall(ref.state_dict(), dict(TINY, num_encoder_layers="2,1,2,1,1,1"))


def test_build_model_reads_namespace_and_keeps_conformer():
    import argparse

    ns = argparse.Namespace(**TINY)
    model = build_model(ns)
    assert type(model.encoder).__name__ == "Zipformer2"
    assert model.encoder.output_dim == 96
    conf = build_model({"model_preset": "tiny", "vocab_size": 30})
    assert type(conf.encoder).__name__ == "Conformer"
    assert conf.encoder_embed is None


# ---------------------------------------------------------------- training side
def _float_at(sf, batch_count):
    sf.batch_count = batch_count
    sf.train()
    return float(sf)


def test_schedules_and_regularisers_sit_where_the_reference_has_them():
    """Every ScheduledFloat / Balancer / Whiten of the reference, at the same module path
    in ours with the same values over the batch count (the unused ``dropout`` schedule
    of icefall's SimpleDownsample is the one exception)."""
    ref = _ref_model(TINY)
    mine = build_model(TINY)
    ref_mods = dict(ref.named_modules(remove_duplicate=False))
    my_mods = dict(mine.named_modules(remove_duplicate=False))
    counts = {"ScheduledFloat": 0, "Balancer": 0, "Whiten": 0}
    for path, m in ref_mods.items():
        kind = type(m).__name__
        if kind not in counts:
            continue
        if kind == "ScheduledFloat" and path.split(".")[-2:-1] in (["downsample"], ["downsample_output"]):
            continue  # stored but never used by icefall
        assert path in my_mods, f"{kind} {path} missing"
        mm = my_mods[path]
        assert type(mm).__name__ == kind, path
        counts[kind] += 1
        for bc in (0.0, 1000.0, 5000.0, 12000.0, 30000.0, 60000.0):
            if kind == "ScheduledFloat":
                assert _float_at(mm, bc) == pytest.approx(_float_at(m, bc)), (path, bc)
                mm.batch_count = m.batch_count = None
                assert float(mm) == pytest.approx(float(m)), (path, "default")
        if kind == "Balancer":
            for attr in ("min_positive", "max_positive", "min_abs", "max_abs", "grad_scale", "prob"):
                a, b = getattr(mm, attr), getattr(m, attr)
                for bc in (0.0, 5000.0, 30000.0):
                    va = _float_at(a, bc) if isinstance(a, torch.nn.Module) else float(a)
                    vb = _float_at(b, bc) if isinstance(b, torch.nn.Module) else float(b)
                    assert va == pytest.approx(vb), (path, attr, bc)
            assert mm.channel_dim == m.channel_dim, path
        if kind == "Whiten":
            assert (mm.num_groups, mm.min_prob, mm.max_prob) == (m.num_groups, m.min_prob, m.max_prob)
            assert float(mm.grad_scale) == float(m.grad_scale), path
            for bc in (0.0, 10000.0, 30000.0):
                a, b = mm.whitening_limit, m.whitening_limit
                va = _float_at(a, bc) if isinstance(a, torch.nn.Module) else float(a)
                vb = _float_at(b, bc) if isinstance(b, torch.nn.Module) else float(b)
                assert va == pytest.approx(vb), (path, bc)
    assert counts["ScheduledFloat"] > 50 and counts["Balancer"] > 20 and counts["Whiten"] > 20


def test_balancer_and_whiten_gradients_equal_reference():
    torch.manual_seed(0)
    x = (torch.randn(7, 5, 24) * torch.linspace(0.1, 6.0, 24) + torch.linspace(-2, 2, 24))
    g = torch.randn_like(x)
    kw = dict(min_positive=0.3, max_positive=0.7, min_abs=0.5, max_abs=2.0, prob=1.0)
    grads = []
    for mod in (my_scaling.Balancer(24, channel_dim=-1, **kw), REF.scaling.Balancer(24, channel_dim=-1, **kw)):
        xx = x.clone().requires_grad_(True)
        mod.train()
        y = mod(xx)
        assert torch.equal(y, x)
        y.backward(g)
        grads.append(xx.grad)
    assert not torch.allclose(grads[0], g)  # the balancer did something
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)

    # Correlated channels: the whitening metric is far above the limit.
    x = torch.randn(50, 3, 16) @ torch.randn(16, 16)
    gw = torch.randn_like(x)
    grads = []
    for cls in (my_scaling.Whiten, REF.scaling.Whiten):
        mod = cls(num_groups=2, whitening_limit=1.5, prob=(1.0, 1.0), grad_scale=0.1)
        xx = x.clone().requires_grad_(True)
        mod.train()
        mod(xx).backward(gw)
        grads.append(xx.grad)
    assert not torch.allclose(grads[0], gw)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_training_step_runs_and_batch_count_reaches_every_schedule():
    model = build_model(TINY)
    set_batch_count(model, 3000.0)
    sfs = [m for m in model.modules() if isinstance(m, my_scaling.ScheduledFloat)]
    assert sfs and all(m.batch_count == 3000.0 for m in sfs)
    model.set_batch_count(5.0)
    assert all(m.batch_count == 5.0 for m in sfs)
    model.train()
    x, x_lens = _padded_batch([120, 80])
    simple, pruned = model(x, x_lens, [[1, 2, 3], [4, 5]])
    (simple + pruned).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(gr is None or torch.isfinite(gr).all() for gr in grads)
    assert model.encoder_embed.conv[0].weight.grad.abs().sum() > 0
    # eval: scheduled values fall back to their defaults, the output is deterministic
    model.eval()
    with torch.no_grad():
        a, _ = model.forward_encoder(x, x_lens)
        b, _ = model.forward_encoder(x, x_lens)
    assert torch.equal(a, b)


def test_decoder_contexts_agree_with_training_rows():
    """Output u of the padded (training) decoder equals the one-step decoder on the last
    context_size tokens of [blank] + y[:u], whether the context is left-padded with blanks
    (this package's searches and KD code) or with -1 as icefall's searches do."""
    ref = _perturbed_reference(dict(TINY, context_size=3))
    mine = _load_through_file(ref, dict(TINY, context_size=3))
    y = torch.tensor([[4, 8, 2, 6]])
    sos_y = torch.cat([torch.zeros(1, 1, dtype=torch.int64), y], dim=1)  # [blank] + y
    with torch.no_grad():
        rows = mine.decoder(sos_y)  # (1, 5, D)
        ref_rows = ref.decoder(sos_y)
        for u in range(sos_y.shape[1]):
            hist = sos_y[0, max(0, u - 2): u + 1].tolist()
            ours = [0] * (3 - len(hist)) + hist  # blank-padded
            icefalls = [-1] * (3 - len(hist)) + hist
            a = mine.decoder(torch.tensor([ours]), need_pad=False)[0, 0]
            b = mine.decoder(torch.tensor([icefalls]), need_pad=False)[0, 0]
            c = ref.decoder(torch.tensor([icefalls]), need_pad=False)[0, 0]
            torch.testing.assert_close(a, rows[0, u], rtol=0, atol=1e-5)
            torch.testing.assert_close(b, rows[0, u], rtol=0, atol=1e-5)
            torch.testing.assert_close(c, ref_rows[0, u], rtol=0, atol=1e-5)
    assert (rows - ref_rows).abs().max().item() < 1e-4


def test_parameter_gradients_equal_reference():
    """Gradients of the same loss w.r.t. every parameter, with the random gradient terms off
    in the reference (Balancer / Whiten probabilities 0) and eval-mode forward in both: checks
    the hand-written backward passes (Swoosh, channels-last ConvNeXt, BiasNorm)."""
    params = dict(TINY)
    ref = _perturbed_reference(params)
    mine = _load_through_file(ref, params)
    for m in ref.modules():
        if type(m).__name__ == "Balancer":
            if isinstance(m.prob, torch.nn.Module):
                del m.prob  # a ScheduledFloat child module
            m.prob = 0.0
        if type(m).__name__ == "Whiten":
            m.prob = m.min_prob = m.max_prob = 0.0
    x, x_lens = _padded_batch([131, 100, 57])
    y = torch.tensor([[0, 3, 7, 1], [0, 5, 2, 2], [0, 9, 9, 9]])
    grads = []
    for model in (ref, mine):
        model.zero_grad()
        out, lens = model.forward_encoder(x, x_lens)
        dec = model.decoder(y)
        logits = model.joiner(out.unsqueeze(2), dec.unsqueeze(1))
        w = torch.Generator().manual_seed(5)
        (logits * torch.randn(logits.shape, generator=w)).sum().backward()
        grads.append({k: p.grad for k, p in model.named_parameters()})
    ref_g, my_g = grads
    assert set(ref_g) == set(my_g)
    for k, g in ref_g.items():
        if g is None:  # e.g. the unused bypass_scale
            assert my_g[k] is None or my_g[k].abs().max() == 0, k
            continue
        scale = g.abs().max().item() + 1e-3
        assert (my_g[k] - g).abs().max().item() < 1e-3 * scale, k


def test_command_line_flags_build_either_encoder():
    import argparse

    from icefall_spkd.models import add_model_arguments

    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    args = parser.parse_args(
        ["--encoder-type", "zipformer", "--num-encoder-layers", "1", "--encoder-dim", "48,64,64,64,64,48",
         "--encoder-unmasked-dim", "32", "--feedforward-dim", "96", "--num-heads", "2",
         "--cnn-module-kernel", "5", "--decoder-dim", "32", "--joiner-dim", "32"]
    )
    model = build_model({**vars(args), "vocab_size": 20})
    cfg = model.model_config
    assert cfg["encoder_type"] == "zipformer" and cfg["num_encoder_layers"] == "1,1,1,1,1,1"
    assert cfg["encoder_dim"] == "48,64,64,64,64,48" and model.encoder.output_dim == 64
    # the stored config rebuilds the same architecture (what checkpoints rely on)
    again = build_model(cfg)
    assert {k: v.shape for k, v in again.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    conf = build_model({**vars(parser.parse_args(["--encoder-dim", "64"])), "vocab_size": 20})
    assert type(conf.encoder).__name__ == "Conformer" and conf.model_config["encoder_dim"] == 64
    with pytest.raises(ValueError, match="comma lists are for --encoder-type zipformer"):
        build_model({**vars(parser.parse_args(["--encoder-dim", "64,64"])), "vocab_size": 20})
    with pytest.raises(ValueError, match="one per stack"):
        build_model({**vars(args), "num_heads": "2,2"})

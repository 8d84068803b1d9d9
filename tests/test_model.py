"""Encoder, decoder, joiner, presets, and a tiny model overfitting a few utterances."""

from __future__ import annotations

import argparse
import math
import time

import pytest
import torch

from icefall_spkd.models import (
    PRESETS,
    Conformer,
    Decoder,
    Joiner,
    Transducer,
    add_model_arguments,
    build_model,
    resolve_model_config,
    subsampled_lengths,
)
from icefall_spkd.models.conformer import RotaryEmbedding
from icefall_spkd.utils import num_parameters

torch.set_num_threads(1)


def _encoder(seed: int = 0) -> Conformer:
    torch.manual_seed(seed)
    return Conformer(
        num_features=80,
        d_model=32,
        num_heads=4,
        feedforward_dim=64,
        num_layers=2,
        cnn_module_kernel=7,
        dropout=0.0,
    ).eval()


# ----------------------------------------------------------------- encoder
def test_output_length_formula_matches_actual_output():
    enc = _encoder()
    with torch.no_grad():
        for T in range(7, 40):
            x = torch.randn(1, T, 80)
            out, lens = enc(x, torch.tensor([T]))
            expected = ((T - 1) // 2 - 1) // 2
            assert expected == (T - 3) // 4
            assert out.shape == (1, expected, 32), T
            assert lens.tolist() == [expected]
    assert subsampled_lengths(torch.tensor([7, 10, 11, 100])).tolist() == [1, 1, 2, 24]


def test_padding_does_not_change_valid_outputs():
    enc = _encoder()
    g = torch.Generator().manual_seed(0)
    T, T_short = 61, 33
    x = torch.randn(2, T, 80, generator=g)
    x_lens = torch.tensor([T, T_short])
    x2 = x.clone()
    x2[1, T_short:] = 100.0 * torch.randn(T - T_short, 80, generator=g)
    with torch.no_grad():
        out1, lens1 = enc(x, x_lens)
        out2, lens2 = enc(x2, x_lens)
        alone, alone_lens = enc(x[1:, :T_short], torch.tensor([T_short]))
    n = int(lens1[1])
    assert n == ((T_short - 1) // 2 - 1) // 2 and lens1.tolist() == lens2.tolist()
    torch.testing.assert_close(out1[1, :n], out2[1, :n])
    torch.testing.assert_close(out1[0], out2[0])  # the other utterance is untouched too
    torch.testing.assert_close(out1[1, :n], alone[0], rtol=1e-4, atol=1e-5)
    assert alone_lens.tolist() == [n]
    assert (out1[1, n:] == 0).all()  # padded output frames are zero


def test_feature_stats_normalise_the_input():
    """set_feature_stats(mean, std) == feeding (x - mean) / std to an identity-stats encoder."""
    enc = _encoder()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 40, 80, generator=g) * 4 - 6
    lens = torch.tensor([40, 31])
    mean, std = torch.randn(80, generator=g) - 6, torch.rand(80, generator=g) * 3 + 1
    with torch.no_grad():
        plain, _ = enc((x - mean) / std, lens)
        enc.set_feature_stats(mean, std)
        normed, _ = enc(x, lens)
    torch.testing.assert_close(normed, plain, rtol=1e-5, atol=1e-5)
    assert torch.equal(enc.state_dict()["feature_std"], std)  # saved with the weights
    with pytest.raises(ValueError, match="positive"):
        enc.set_feature_stats(mean, torch.zeros(80))
    with pytest.raises(ValueError, match="80 bins"):
        enc.set_feature_stats(torch.zeros(3), torch.ones(3))


@pytest.mark.parametrize("where", ["block", "final"])
def test_output_norm_options(where):
    """'block' normalises every block's output, 'final' only the encoder output; 'none' neither."""
    torch.manual_seed(0)
    kw = dict(num_features=80, d_model=32, num_heads=4, feedforward_dim=64, num_layers=2,
              cnn_module_kernel=7, dropout=0.0)  # fmt: skip
    enc = Conformer(**kw, output_norm=where).eval()
    x = torch.randn(1, 40, 80) * 5
    with torch.no_grad():
        out, _ = enc(x, torch.tensor([40]))
    # LayerNorm output (default affine): zero mean, unit variance per frame
    torch.testing.assert_close(out.mean(-1), torch.zeros(1, out.shape[1]), atol=1e-5, rtol=0)
    assert enc.layers[0].norm_out.__class__.__name__ == (
        "LayerNorm" if where == "block" else "Identity"
    )
    with pytest.raises(ValueError, match="output_norm"):
        Conformer(**kw, output_norm="sometimes")


def test_rotary_scores_depend_on_offset_only():
    rope = RotaryEmbedding(8)
    g = torch.Generator().manual_seed(0)
    q0, k0 = torch.randn(8, generator=g), torch.randn(8, generator=g)
    T = 12
    q = rope(q0.expand(T, 8).clone())
    k = rope(k0.expand(T, 8).clone())
    scores = q @ k.T  # scores[i, j] = f(i - j)
    for off in (-3, 0, 5):
        diag = torch.diagonal(scores, offset=off)
        torch.testing.assert_close(diag, diag[0].expand_as(diag), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(scores[0, 0], scores[0, 5])


# ----------------------------------------------------------------- decoder
@pytest.mark.parametrize("context_size", [1, 2, 3])
def test_decoder_need_pad_matches_step_by_step(context_size: int):
    torch.manual_seed(0)
    dec = Decoder(vocab_size=11, decoder_dim=16, blank_id=0, context_size=context_size)
    y = torch.tensor([[0, 3, 5, 7, 2, 9], [0, 1, 1, 4, 10, 6]])
    full = dec(y, need_pad=True)
    assert full.shape == (2, 6, 16)
    history = torch.nn.functional.pad(y, (context_size - 1, 0), value=0)
    for u in range(y.shape[1]):
        step = dec(history[:, u : u + context_size], need_pad=False)
        assert step.shape == (2, 1, 16)
        torch.testing.assert_close(full[:, u : u + 1], step)
    with pytest.raises(ValueError):
        dec(y, need_pad=False)  # width 6 != context_size
    # Output u only depends on the last context_size tokens.
    y2 = y.clone()
    y2[:, 0] = 8
    if y.shape[1] > context_size:
        torch.testing.assert_close(dec(y2)[:, context_size:], full[:, context_size:])


# ------------------------------------------------------------------ joiner
def test_joiner_broadcast_and_project_input():
    torch.manual_seed(0)
    j = Joiner(encoder_dim=12, decoder_dim=10, joiner_dim=8, vocab_size=5)
    enc, dec = torch.randn(2, 4, 12), torch.randn(2, 3, 10)
    out = j(enc.unsqueeze(2), dec.unsqueeze(1))
    assert out.shape == (2, 4, 3, 5)
    ref = j.output_linear(torch.tanh(j.encoder_proj(enc)[:, 1] + j.decoder_proj(dec)[:, 2]))
    torch.testing.assert_close(out[:, 1, 2], ref)
    pre = j(j.encoder_proj(enc).unsqueeze(2), j.decoder_proj(dec).unsqueeze(1), project_input=False)
    torch.testing.assert_close(pre, out)


# ----------------------------------------------------------------- presets
def test_presets_parameter_counts():
    targets = {"tiny": 1e6, "small": 6e6, "medium": 20e6, "large": 70e6}
    assert set(PRESETS) == set(targets)
    for name, target in targets.items():
        model = build_model(name)
        assert isinstance(model, Transducer)
        n = num_parameters(model)
        assert abs(n - target) / target < 0.1, (name, n)
        assert model.vocab_size == 500 and model.blank_id == 0
        assert model.encoder.output_dim == PRESETS[name]["encoder_dim"]
        del model


def test_argparse_flags_override_preset():
    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    args = parser.parse_args(["--model-preset", "tiny", "--encoder-dim", "64", "--joiner-dim", "48"])
    params = dict(vars(args), vocab_size=30)
    cfg = resolve_model_config(params)
    assert cfg.encoder_dim == 64 and cfg.joiner_dim == 48 and cfg.vocab_size == 30
    assert cfg.num_encoder_layers == PRESETS["tiny"]["num_encoder_layers"]
    model = build_model(params)
    assert model.joiner.output_linear.weight.shape == (30, 48)
    assert model.simple_am_proj.weight.shape == (30, 64)
    assert model.model_config["encoder_dim"] == 64
    defaults = parser.parse_args([])
    assert resolve_model_config(vars(defaults)).encoder_dim == PRESETS["small"]["encoder_dim"]
    with pytest.raises(ValueError):
        resolve_model_config({"encoder_dim": 32})  # no preset and dims missing


# --------------------------------------------------------------- overfitting
def test_tiny_model_overfits_four_utterances():
    """A small model memorises 4 random utterances.

    Threshold: with V = 20 an untrained model is near chance, i.e. about
    log(20) ~= 3.0 nats per encoder frame (measured ~3.7: the path also has
    U emit arcs). A model that has memorised the data puts nearly all mass on
    the reference, so the per-frame pruned loss goes to ~0 (measured ~0.01 after
    150 steps, ~1.5 s on one CPU thread). Requiring < 0.3 nats/frame (a 10x
    drop, far below chance) leaves a wide margin for seed / BLAS differences
    while failing for a model whose loss or gradients are wrong.
    """
    torch.manual_seed(0)
    V = 20
    model = build_model(
        dict(
            encoder_dim=64,
            num_encoder_layers=2,
            num_heads=4,
            feedforward_dim=128,
            cnn_module_kernel=7,
            decoder_dim=64,
            joiner_dim=64,
            vocab_size=V,
            dropout=0.0,
        )
    )
    g = torch.Generator().manual_seed(1)
    x_lens = torch.tensor([60, 52, 45, 40])
    x = torch.randn(4, 60, 80, generator=g)
    ys = [torch.randint(1, V, (n,), generator=g).tolist() for n in (5, 4, 4, 3)]
    frames = subsampled_lengths(x_lens).sum().item()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    start = time.time()
    first = None
    for _ in range(150):
        simple, pruned = model(x, x_lens, ys, prune_range=3)
        if first is None:
            first = pruned.item() / frames
        loss = (0.5 * simple + pruned) / frames
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        _, pruned = model(x, x_lens, ys, prune_range=3)
    final = pruned.item() / frames
    assert first > 0.9 * math.log(V), first  # started near chance
    assert final < 0.3 and final < 0.1 * first, (first, final)
    assert time.time() - start < 60

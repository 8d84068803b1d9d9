"""kd_diagnostics.sample_window_overlap against a brute-force count of lattice nodes."""

from __future__ import annotations

import math

import pytest
import torch

from icefall_spkd.kd_diagnostics import COUNTS, add_counts, sample_window_overlap, summarise
from icefall_spkd.sampling import sample_sequences

V = 8


def _model():
    presets = pytest.importorskip("icefall_spkd.models.presets")
    torch.manual_seed(0)
    m = presets.build_model(
        dict(encoder_dim=16, num_encoder_layers=1, num_heads=2, feedforward_dim=32,
             cnn_module_kernel=3, decoder_dim=16, joiner_dim=16, vocab_size=V, feature_dim=8,
             dropout=0.0)
    )  # fmt: skip
    with torch.no_grad():
        m.joiner.output_linear.weight.mul_(3.0)
    return m.eval()


def _node_entropy(model, enc_t, context):
    """The teacher's entropy at one node, from the decoder run on the context alone."""
    dec = model.decoder(torch.tensor([context]), need_pad=False)[:, -1]
    j = model.joiner
    logp = torch.log_softmax(j(j.encoder_proj(enc_t)[None], j.decoder_proj(dec), project_input=False), -1)
    return float(-(logp.exp() * logp).sum())


def test_overlap_matches_brute_force_on_the_whole_lattice():
    """With R_kd above every sequence's length the KD window is the whole lattice, so the
    nodes of a sequence are all (t, context of u) with t < T_b, u <= U_b: count them by hand."""
    model = _model()
    g = torch.Generator().manual_seed(1)
    B, T = 3, 6
    enc = torch.randn(B, T, 16, generator=g)
    lens = torch.tensor([6, 5, 3])
    N, R = 3, 12
    with torch.no_grad():
        # the samples do not depend on the references: make one reference a sample
        drawn = sample_sequences(model, enc, lens, N, generator=torch.Generator().manual_seed(7))
        refs = [[3, 5], list(drawn[1][2]), [4, 4, 6]]
        got = sample_window_overlap(model, enc, lens, refs, N, prune_range=R,
                                    generator=torch.Generator().manual_seed(7))  # fmt: skip
    cs = model.decoder.context_size

    def nodes(b, seq):
        padded = [model.blank_id] * cs + list(seq)
        return {(t, tuple(padded[u : u + cs])) for t in range(int(lens[b])) for u in range(len(seq) + 1)}

    want = dict.fromkeys(COUNTS, 0.0)
    with torch.no_grad():
        for b in range(B):
            ref = nodes(b, refs[b])
            samp = set().union(*(nodes(b, s) for s in drawn[b]))
            ent = {n: _node_entropy(model, enc[b, n[0]], list(n[1])) for n in ref | samp}
            want["utterances"] += 1
            want["samples"] += N
            want["samples_equal_reference"] += sum(s == refs[b] for s in drawn[b])
            want["ref_nodes"] += len(ref)
            want["sample_nodes"] += len(samp)
            want["sample_nodes_in_ref"] += len(samp & ref)
            want["ref_entropy"] += sum(ent[n] for n in ref)
            want["shared_entropy"] += sum(ent[n] for n in samp & ref)
            want["new_entropy"] += sum(ent[n] for n in samp - ref)
    assert 0 < want["sample_nodes_in_ref"] < want["sample_nodes"]  # the case is not trivial
    assert 0 < want["samples_equal_reference"] < want["samples"]
    for k in COUNTS:
        assert got[k] == pytest.approx(want[k], rel=1e-4, abs=1e-4), k
    # two batches add up, and the summary divides the right totals
    s = summarise(add_counts(add_counts({}, got), got))
    assert s["sample_nodes_in_ref"] == pytest.approx(want["sample_nodes_in_ref"] / want["sample_nodes"])
    new = want["sample_nodes"] - want["sample_nodes_in_ref"]
    assert s["new_entropy"] == pytest.approx(want["new_entropy"] / new, rel=1e-4)
    assert s["new_nodes_per_ref_node"] == pytest.approx(new / want["ref_nodes"])
    assert math.isnan(summarise(dict.fromkeys(COUNTS, 0.0))["ref_entropy"])

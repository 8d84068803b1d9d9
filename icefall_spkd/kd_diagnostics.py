"""What SP-KD's sampled sequences add to PKD: their KD-window nodes and the teacher there.

SP-KD (``docs/SPKD.md``) distils the teacher on the pruned KD window of the
reference and, in addition, on the windows of label sequences sampled from
the teacher. A sampled sequence can only teach the student something PKD
does not when its window holds nodes that the reference's window lacks, and
only where the teacher says something there. :func:`sample_window_overlap`
measures both on one batch, for the teacher alone:

- how many of the samples' distinct window nodes are also nodes of the
  reference's window (a node is fixed by utterance, frame and decoder
  context, :func:`icefall_spkd.kd.window_node_keys`; a shared node has the
  same teacher distribution in both terms);
- the teacher's entropy (nats, at temperature 1) on the reference's nodes,
  on the samples' nodes that the reference shares, and on the new ones;
- how often a sample is the reference itself.

The counts are sums, so batches add up (:func:`add_counts`) and
:func:`summarise` turns the totals into shares and means.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import Tensor

from icefall_spkd.kd import SequenceRows, _kd_window, window_node_keys
from icefall_spkd.kd_losses import window_mask
from icefall_spkd.kd_options import KDOptions
from icefall_spkd.sampling import sample_sequences
from icefall_spkd.utils import pad_token_ids

COUNTS = (
    "utterances", "samples", "samples_equal_reference", "ref_nodes", "sample_nodes",
    "sample_nodes_in_ref", "ref_entropy", "shared_entropy", "new_entropy",
)  # fmt: skip


@torch.no_grad()
def sample_window_overlap(
    model: Any,
    encoder_out: Tensor,
    encoder_out_lens: Tensor,
    references: Sequence[Sequence[int]],
    num_samples: int,
    prune_range: int = 5,
    temperature: float = 1.0,
    generator: Optional[torch.Generator] = None,
) -> Dict[str, float]:
    """Counts of one batch: the samples' KD-window nodes against the reference's.

    Args:
      model: the teacher (a Transducer in eval mode); its windows are the
        KD windows SP-KD uses with ``--kd-ranges teacher``.
      encoder_out, encoder_out_lens: its encoder output ``(B, T, C)`` and lengths.
      references: the ``B`` reference token sequences.
      num_samples: sequences sampled per utterance (SP-KD's N).
      prune_range: the KD window width ``R_kd``.
      temperature: of the sampler.
    Returns:
      ``{name: sum}`` for every name in :data:`COUNTS`; nodes are counted once
      per utterance however many rows hold them; the entropies are sums over
      those nodes.
    """
    B = len(references)
    device = encoder_out.device
    drawn = sample_sequences(model, encoder_out, encoder_out_lens, num_samples, temperature, generator)
    seqs: List[List[int]] = [list(r) for r in references]
    seqs += [list(drawn[b][n]) for n in range(num_samples) for b in range(B)]
    utt = torch.arange(B, device=device).repeat(num_samples + 1)
    y, y_lens = pad_token_ids(seqs, pad_id=model.blank_id, device=device)
    # one model plays teacher and student: its encoder and decoder outputs serve both
    enc = encoder_out.index_select(0, utt)
    dec = model.run_decoder(y)
    rows = SequenceRows(enc, enc, encoder_out_lens.index_select(0, utt), y, y_lens, dec, dec)
    opts = KDOptions(kd_loss="pkd", kd_prune_range=prune_range, kd_ranges="teacher")
    ranges = _kd_window(model, model, rows, opts)
    live = window_mask(ranges, rows.boundary)
    keys = window_node_keys(
        rows.y, ranges, utt, model.decoder.context_size, model.vocab_size, model.blank_id
    )
    logp = torch.log_softmax(model.joiner_on_ranges(rows.t_enc, rows.t_dec, ranges).float(), -1)
    entropy = -(logp.exp() * logp).sum(-1)
    is_ref = (torch.arange(len(seqs), device=device) < B).view(-1, 1, 1).expand_as(live)

    def distinct(mask: Tensor) -> tuple[Tensor, Tensor]:
        """Distinct keys under ``mask`` and the entropy at each (equal keys, equal entropy)."""
        k, e = keys[mask], entropy[mask]
        uniq, inverse = torch.unique(k, return_inverse=True)
        ent = torch.zeros(uniq.numel(), dtype=e.dtype, device=device).scatter_(0, inverse, e)
        return uniq, ent

    ref_keys, ref_ent = distinct(live & is_ref)
    samp_keys, samp_ent = distinct(live & ~is_ref)
    shared = torch.isin(samp_keys, ref_keys)
    equal = sum(seqs[B + i] == seqs[i % B] for i in range(num_samples * B))
    return {
        "utterances": float(B),
        "samples": float(num_samples * B),
        "samples_equal_reference": float(equal),
        "ref_nodes": float(ref_keys.numel()),
        "sample_nodes": float(samp_keys.numel()),
        "sample_nodes_in_ref": float(shared.sum()),
        "ref_entropy": float(ref_ent.sum()),
        "shared_entropy": float(samp_ent[shared].sum()),
        "new_entropy": float(samp_ent[~shared].sum()),
    }


def add_counts(total: Dict[str, float], batch: Dict[str, float]) -> Dict[str, float]:
    """``total + batch``, name by name (``total`` may be empty)."""
    return {k: total.get(k, 0.0) + batch[k] for k in COUNTS}


def summarise(total: Dict[str, float]) -> Dict[str, float]:
    """Shares and mean entropies from summed counts."""

    def ratio(a: float, b: float) -> float:
        return a / b if b else float("nan")

    new_nodes = total["sample_nodes"] - total["sample_nodes_in_ref"]
    return {
        "utterances": total["utterances"],
        "samples_equal_reference": ratio(total["samples_equal_reference"], total["samples"]),
        "sample_nodes_per_ref_node": ratio(total["sample_nodes"], total["ref_nodes"]),
        "sample_nodes_in_ref": ratio(total["sample_nodes_in_ref"], total["sample_nodes"]),
        "new_nodes_per_ref_node": ratio(new_nodes, total["ref_nodes"]),
        "ref_entropy": ratio(total["ref_entropy"], total["ref_nodes"]),
        "shared_entropy": ratio(total["shared_entropy"], total["sample_nodes_in_ref"]),
        "new_entropy": ratio(total["new_entropy"], new_nodes),
    }

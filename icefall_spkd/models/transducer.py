"""Stateless RNN-T (transducer) with the pruned RNN-T loss.

Loss path (all loss math in float32 with autocast disabled, ``rnnt_type="regular"``)::

    am = simple_am_proj(encoder_out)   (B, T, V)
    lm = simple_lm_proj(decoder_out)   (B, U+1, V)
    simple_loss, (px_grad, py_grad) = rnnt_loss_smoothed(lm, am, ..., return_grad=True)
    ranges = get_rnnt_prune_ranges(px_grad, py_grad, boundary, prune_range)
    am_p, lm_p = do_rnnt_pruning(joiner.encoder_proj(encoder_out),
                                 joiner.decoder_proj(decoder_out), ranges)
    logits = joiner(am_p, lm_p, project_input=False)     (B, T, R, V)
    pruned_loss = rnnt_loss_pruned(logits, y, ranges, ...)

Both losses are summed over the batch (``reduction="sum"``).

Empty references (``y_lens[b] == 0``): k2 / fast_rnnt assert ``S_b >= 1``
in their loss wrappers, although the underlying ``mutual_information_recursion``
handles ``S_b = 0`` (the only path is ``T_b`` blanks). When a batch contains an
empty reference, the same computation is done in two steps -- the backend's
``get_rnnt_logprobs_smoothed`` / ``get_rnnt_logprobs_pruned`` (given a boundary
with ``S_b`` raised to 1, which they only use for that assertion; the ``-inf``
they write depends on ``T_b`` only) then ``mutual_information_recursion`` with
the true boundary. ``get_rnnt_prune_ranges`` is given the same raised boundary,
which yields the same ranges. This is exactly what ``rnnt_loss_smoothed`` and
``rnnt_loss_pruned`` compute (no delay penalty), so the two paths agree on
batches without empty references (tested).

Prune width: ``R = ranges.shape[-1]`` is ``prune_range`` except where the
backend changes it: ``min(prune_range, U_max + 1)`` when every reference is
shorter than ``prune_range - 1`` (``R = 1`` when all are empty), and raised
when some utterance has more symbols than ``T_b * (prune_range - 1)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from icefall_spkd import pruned_rnnt
from icefall_spkd.utils import pad_token_ids

from .decoder import Decoder
from .encoder_interface import EncoderInterface
from .joiner import Joiner

# Used only for batches with empty references (see the module docstring).
_get_rnnt_logprobs_smoothed = pruned_rnnt.get_rnnt_logprobs_smoothed


@dataclass
class TransducerOutputs:
    """Everything a (KD) loss needs from one forward pass.

    ``B`` utterances, ``T`` encoder frames, ``U`` = ``y_padded.shape[1]``,
    ``R`` prune width (see module docstring), ``V`` vocabulary.
    """

    simple_loss: Tensor  # scalar, sum over the batch
    pruned_loss: Tensor  # scalar, sum over the batch
    encoder_out: Tensor  # (B, T, C)
    encoder_out_lens: Tensor  # (B,)
    decoder_out: Tensor  # (B, U+1, D), decoder run on [blank] + y
    boundary: Tensor  # (B, 4) int64 [0, 0, y_lens, encoder_out_lens]
    px_grad: Tensor  # (B, U, T+1) simple-loss occupancy of emit arcs
    py_grad: Tensor  # (B, U+1, T) simple-loss occupancy of blank arcs
    ranges: Tensor  # (B, T, R) int64
    logits: Tensor  # (B, T, R, V) float32 real-joiner logits on ranges


def _no_autocast(device: torch.device) -> torch.autocast:
    return torch.autocast(device_type=device.type, enabled=False)


class Transducer(nn.Module):
    """Encoder + stateless decoder + joiner, trained with the pruned RNN-T loss.

    Args:
      encoder: an :class:`EncoderInterface` (``output_dim`` = ``encoder_dim``).
      decoder: the stateless :class:`Decoder`.
      joiner: the :class:`Joiner`.
      encoder_dim: ``C``.
      decoder_dim: ``D``.
      vocab_size: ``V`` (blank included).
    """

    def __init__(
        self,
        encoder: EncoderInterface,
        decoder: Decoder,
        joiner: Joiner,
        encoder_dim: int,
        decoder_dim: int,
        vocab_size: int,
        encoder_embed: Optional[nn.Module] = None,
        use_ctc: bool = False,
    ) -> None:
        super().__init__()
        if encoder_embed is not None:
            # icefall's Zipformer layout: the front end is a top-level module.
            self.encoder_embed = encoder_embed
        else:
            self.encoder_embed = None
        self.encoder = encoder
        self.decoder = decoder
        self.joiner = joiner
        self.vocab_size = vocab_size
        self.blank_id = decoder.blank_id
        self.simple_am_proj = nn.Linear(encoder_dim, vocab_size)
        self.simple_lm_proj = nn.Linear(decoder_dim, vocab_size)
        # icefall's CTC head: Dropout(0.1), Linear(encoder_dim, vocab), LogSoftmax.
        self.ctc_output: Optional[nn.Sequential] = None
        if use_ctc:
            self.ctc_output = nn.Sequential(
                nn.Dropout(p=0.1), nn.Linear(encoder_dim, vocab_size), nn.LogSoftmax(dim=-1)
            )

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        x: Tensor,
        x_lens: Tensor,
        y: Sequence[Sequence[int]],
        prune_range: int = 5,
        am_scale: float = 0.0,
        lm_scale: float = 0.0,
        return_outputs: bool = False,
    ) -> tuple[Tensor, Tensor] | TransducerOutputs:
        """Training losses.

        Args:
          x: ``(N, T, F)`` features.
          x_lens: ``(N,)`` valid frames.
          y: one token-id list per utterance (no blanks; may be empty).
          prune_range: symbols kept per frame by the pruned loss.
          am_scale: ``am_only_scale`` of the smoothed simple loss.
          lm_scale: ``lm_only_scale`` of the smoothed simple loss.
          return_outputs: return the whole :class:`TransducerOutputs` instead
            (used by KD; going through ``forward`` keeps a DDP wrapper in charge
            of gradient synchronisation).
        Returns:
          ``(simple_loss, pruned_loss)``, scalars summed over the batch, float32;
          or the :class:`TransducerOutputs` when ``return_outputs``.
        """
        encoder_out, encoder_out_lens = self.forward_encoder(x, x_lens)
        y_padded, y_lens = pad_token_ids(y, pad_id=self.blank_id, device=encoder_out.device)
        out = self.transducer_outputs(
            encoder_out, encoder_out_lens, y_padded, y_lens, prune_range, am_scale, lm_scale
        )
        if return_outputs:
            return out
        return out.simple_loss, out.pruned_loss

    def forward_encoder(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` (N, T, F), ``x_lens`` (N,) -> ``encoder_out`` (N, T', C), ``encoder_out_lens`` (N,).

        With an ``encoder_embed`` (Zipformer) it runs first, then the encoder on
        its (N, T, C) output; no feature normalisation is applied (as in icefall).
        """
        if self.encoder_embed is not None:
            x, x_lens = self.encoder_embed(x, x_lens)
            if bool((x_lens <= 0).any()):
                raise ValueError(
                    f"an utterance is too short for the Zipformer front end (input lengths "
                    f"{(x_lens * 2 + 7).tolist()}); it needs at least 9 feature frames"
                )
        return self.encoder(x, x_lens)

    def ctc_loss(
        self, encoder_out: Tensor, encoder_out_lens: Tensor, y_padded: Tensor, y_lens: Tensor
    ) -> Tensor:
        """icefall's CTC loss (``reduction="sum"``, blank = ``blank_id``) of the CTC head.

        Args:
          encoder_out: ``(N, T, C)``; encoder_out_lens: ``(N,)``.
          y_padded: ``(N, U)`` token ids (anything after each ``y_lens[n]``).
          y_lens: ``(N,)``.
        Returns:
          Scalar float32, the negative log-likelihood summed over the batch
          (``inf`` where a target cannot fit, as ``torch.nn.functional.ctc_loss``).
        """
        if self.ctc_output is None:
            raise RuntimeError("this model has no CTC head; build it with use_ctc=True")
        log_probs = self.ctc_output(encoder_out)  # (N, T, V)
        with _no_autocast(encoder_out.device):
            return F.ctc_loss(
                log_probs=log_probs.float().transpose(0, 1),
                targets=y_padded.to(torch.int64).cpu(),
                input_lengths=encoder_out_lens.to(torch.int64).cpu(),
                target_lengths=y_lens.to(torch.int64).cpu(),
                blank=self.blank_id,
                reduction="sum",
            )

    def set_batch_count(self, batch_count: float) -> None:
        """Set the training batch count that drives every ScheduledFloat (Zipformer).

        icefall passes ``batch_idx_train * max_duration * world_size / 600``
        (``get_adjusted_batch_count``); call it every step and after resuming.
        A no-op for models without scheduled values (the Conformer).
        """
        from .scaling import set_batch_count

        set_batch_count(self, batch_count)

    def run_decoder(self, y_padded: Tensor) -> Tensor:
        """Decoder on ``[blank] + y``: ``y_padded`` (B, U) -> (B, U+1, D)."""
        sos_y = F.pad(y_padded, (1, 0), value=self.blank_id)
        return self.decoder(sos_y, need_pad=True)

    def boundary(self, y_lens: Tensor, encoder_out_lens: Tensor) -> Tensor:
        """``(B, 4)`` int64 rows ``[0, 0, y_lens[b], encoder_out_lens[b]]``."""
        b = torch.zeros(y_lens.shape[0], 4, dtype=torch.int64, device=encoder_out_lens.device)
        b[:, 2] = y_lens
        b[:, 3] = encoder_out_lens
        return b

    def transducer_outputs(
        self,
        encoder_out: Tensor,
        encoder_out_lens: Tensor,
        y_padded: Tensor,
        y_lens: Tensor,
        prune_range: int = 5,
        am_scale: float = 0.0,
        lm_scale: float = 0.0,
    ) -> TransducerOutputs:
        """Losses and the intermediate tensors a KD loss needs.

        Args:
          encoder_out: ``(B, T, C)``.
          encoder_out_lens: ``(B,)`` int64.
          y_padded: ``(B, U)`` int64 tokens (any valid id after each end).
          y_lens: ``(B,)`` int64 (0 allowed).
          prune_range, am_scale, lm_scale: as in :meth:`forward`.
        Returns:
          :class:`TransducerOutputs`. ``px_grad`` / ``py_grad`` are copies, so a
          later ``backward()`` (which the backend runs in place on its own
          copies) does not change them.
        """
        y_padded = y_padded.to(torch.int64)
        boundary = self.boundary(y_lens.to(torch.int64), encoder_out_lens.to(torch.int64))
        has_empty = bool((boundary[:, 2] == 0).any())

        decoder_out = self.run_decoder(y_padded)  # (B, U+1, D)
        lm = self.simple_lm_proj(decoder_out)
        am = self.simple_am_proj(encoder_out)

        with _no_autocast(encoder_out.device):
            simple_loss, (px_grad, py_grad) = self._simple_loss(
                lm.float(), am.float(), y_padded, boundary, am_scale, lm_scale, has_empty
            )
            ranges = self._prune_ranges(px_grad, py_grad, boundary, prune_range)

        logits = self.joiner_on_ranges(encoder_out, decoder_out, ranges)

        with _no_autocast(encoder_out.device):
            logits = logits.float()
            pruned_loss = self._pruned_loss(logits, y_padded, ranges, boundary, has_empty)

        return TransducerOutputs(
            simple_loss=simple_loss,
            pruned_loss=pruned_loss,
            encoder_out=encoder_out,
            encoder_out_lens=encoder_out_lens,
            decoder_out=decoder_out,
            boundary=boundary,
            px_grad=px_grad.detach().clone(),
            py_grad=py_grad.detach().clone(),
            ranges=ranges,
            logits=logits,
        )

    def joiner_on_ranges(self, encoder_out: Tensor, decoder_out: Tensor, ranges: Tensor) -> Tensor:
        """Joiner logits on the nodes named by ``ranges``.

        Args:
          encoder_out: ``(B, T, C)``.
          decoder_out: ``(B, U+1, D)``.
          ranges: ``(B, T, R)`` int64; node ``(b, t, k)`` is ``(t, u=ranges[b, t, k])``.
        Returns:
          ``(B, T, R, V)`` logits (dtype of the joiner's computation, e.g. half
          under autocast).
        """
        am_pruned, lm_pruned = pruned_rnnt.do_rnnt_pruning(
            self.joiner.encoder_proj(encoder_out), self.joiner.decoder_proj(decoder_out), ranges
        )
        return self.joiner(am_pruned, lm_pruned, project_input=False)

    # ------------------------------------------------------------ loss pieces
    def _simple_loss(
        self,
        lm: Tensor,
        am: Tensor,
        y_padded: Tensor,
        boundary: Tensor,
        am_scale: float,
        lm_scale: float,
        has_empty: bool,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Smoothed simple loss (sum) and occupancies ``(px_grad (B,U,T+1), py_grad (B,U+1,T))``."""
        if not has_empty:
            return pruned_rnnt.rnnt_loss_smoothed(
                lm=lm,
                am=am,
                symbols=y_padded,
                termination_symbol=self.blank_id,
                lm_only_scale=lm_scale,
                am_only_scale=am_scale,
                boundary=boundary,
                rnnt_type="regular",
                reduction="sum",
                return_grad=True,
            )
        px, py = _get_rnnt_logprobs_smoothed(
            lm=lm,
            am=am,
            symbols=y_padded,
            termination_symbol=self.blank_id,
            lm_only_scale=lm_scale,
            am_only_scale=am_scale,
            boundary=pruned_rnnt.backend_boundary(boundary),
            rnnt_type="regular",
        )
        scores, grads = pruned_rnnt.mutual_information_recursion(
            px=px, py=py, boundary=boundary, return_grad=True
        )
        return -scores.sum(), grads

    def _prune_ranges(
        self, px_grad: Tensor, py_grad: Tensor, boundary: Tensor, prune_range: int
    ) -> Tensor:
        """``(B, T, R)`` int64 pruning ranges from the simple-loss occupancies."""
        B, S, _ = px_grad.shape
        T = py_grad.shape[-1]
        if S == 0:  # every reference empty: the only node of each frame is u = 0
            return torch.zeros(B, T, 1, dtype=torch.int64, device=px_grad.device)
        return pruned_rnnt.get_rnnt_prune_ranges(
            px_grad=px_grad, py_grad=py_grad, boundary=pruned_rnnt.backend_boundary(boundary), s_range=prune_range
        )

    def _pruned_loss(
        self, logits: Tensor, y_padded: Tensor, ranges: Tensor, boundary: Tensor, has_empty: bool
    ) -> Tensor:
        """Pruned RNN-T loss (sum) from float32 ``logits`` (B, T, R, V)."""
        if not has_empty:
            return pruned_rnnt.rnnt_loss_pruned(
                logits=logits,
                symbols=y_padded,
                ranges=ranges,
                termination_symbol=self.blank_id,
                boundary=boundary,
                rnnt_type="regular",
                reduction="sum",
            )
        px, py = pruned_rnnt.get_rnnt_logprobs_pruned(
            logits=logits,
            symbols=y_padded,
            ranges=ranges,
            termination_symbol=self.blank_id,
            boundary=pruned_rnnt.backend_boundary(boundary),
            rnnt_type="regular",
        )
        scores = pruned_rnnt.mutual_information_recursion(px=px, py=py, boundary=boundary)
        return -scores.sum()

    # --------------------------------------------------------------- reference
    def full_rnnt_loss(
        self,
        encoder_out: Tensor,
        encoder_out_lens: Tensor,
        y_padded: Tensor,
        y_lens: Tensor,
        reduction: str = "sum",
    ) -> Tensor:
        """Unpruned RNN-T loss through the same decoder and joiner (tests/benchmarks).

        Builds the full ``(B, T, U+1, V)`` joiner output (memory ``B*T*(U+1)*V``),
        the emit/blank log-probs from its log-softmax, and runs the backend's
        ``mutual_information_recursion``. Handles empty references.

        Args:
          encoder_out: ``(B, T, C)``; encoder_out_lens: ``(B,)``.
          y_padded: ``(B, U)`` int64; y_lens: ``(B,)``.
          reduction: ``"sum"``, ``"mean"`` or ``"none"`` (per utterance, ``(B,)``).
        Returns:
          The negative log-likelihood, float32.
        """
        y_padded = y_padded.to(torch.int64)
        boundary = self.boundary(y_lens.to(torch.int64), encoder_out_lens.to(torch.int64))
        decoder_out = self.run_decoder(y_padded)
        logits = self.joiner(encoder_out.unsqueeze(2), decoder_out.unsqueeze(1))  # (B,T,U+1,V)
        with _no_autocast(encoder_out.device):
            log_probs = logits.float().log_softmax(dim=-1)
            B, T, U1, V = log_probs.shape
            U = U1 - 1
            py = log_probs[..., self.blank_id].transpose(1, 2).contiguous()  # (B, U+1, T)
            index = y_padded.reshape(B, 1, U, 1).expand(B, T, U, 1)
            px = torch.gather(log_probs[:, :, :U, :], dim=3, index=index).squeeze(3)  # (B,T,U)
            px = F.pad(px.transpose(1, 2), (0, 1), value=float("-inf"))  # (B, U, T+1)
            # No symbol may be emitted at the one-past-the-last frame t = T_b.
            t_idx = torch.arange(T + 1, device=px.device).reshape(1, 1, T + 1)
            px = px.masked_fill(t_idx == boundary[:, 3].reshape(B, 1, 1), float("-inf"))
            scores = pruned_rnnt.mutual_information_recursion(px=px, py=py, boundary=boundary)
        if reduction == "none":
            return -scores
        if reduction == "mean":
            return -scores.mean()
        if reduction == "sum":
            return -scores.sum()
        raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")

"""The pruned RNN-T functions, from k2 when it imports, else from fast_rnnt.

Everything else in this package calls these names and never imports k2 or
fast_rnnt directly, so switching backend is invisible to the rest of the code.
fast_rnnt is the stand-alone copy of k2's RNN-T code by the same authors, with
the same function names, arguments and tensor layouts:

- ``get_rnnt_logprobs(lm, am, symbols, termination_symbol, boundary, rnnt_type)``
- ``get_rnnt_logprobs_smoothed(lm, am, symbols, termination_symbol, lm_only_scale, am_only_scale, boundary, rnnt_type)``
- ``rnnt_loss_simple`` / ``rnnt_loss_smoothed(..., return_grad=True)`` giving
  ``(loss, (px_grad, py_grad))``
- ``get_rnnt_prune_ranges(px_grad, py_grad, boundary, s_range)``
- ``do_rnnt_pruning(am, lm, ranges)``
- ``get_rnnt_logprobs_pruned(logits, symbols, ranges, termination_symbol, boundary, rnnt_type)``
- ``rnnt_loss_pruned(logits, symbols, ranges, termination_symbol, boundary, rnnt_type, reduction)``
- ``rnnt_loss(logits, symbols, termination_symbol, boundary, rnnt_type, reduction)``
- ``mutual_information_recursion(px, py, boundary, return_grad)``

Layouts (k2's): for ``B`` utterances, ``S`` symbols and ``T`` frames,
``px`` is ``(B, S, T+1)`` (emit arcs), ``py`` is ``(B, S+1, T)`` (blank arcs)
for the "regular" topology used throughout this project, and
``boundary`` is ``(B, 4)`` int64 rows ``[0, 0, S_b, T_b]``.
"""

from __future__ import annotations

from types import ModuleType

from torch import Tensor

INSTALL_HINT = (
    "Neither k2 nor fast_rnnt could be imported; one of them is needed for the "
    "pruned RNN-T loss.\n"
    "  * CPU / this repository's default: run `bash scripts/setup.sh`, which builds "
    "fast_rnnt 1.3 from its PyPI sdist into .venv.\n"
    "  * GPU: install k2 from the k2 project's wheel index matched to your torch and "
    "CUDA, e.g. `pip install k2==<k2-version>+cuda<X.Y>.torch<torch-version> -f "
    "https://k2-fsa.github.io/k2/cuda.html` (see README.md)."
)


def _load_backend() -> tuple[ModuleType, str]:
    try:
        import k2  # noqa: F401

        return k2, "k2"
    except Exception:  # k2 missing, or a mis-tagged wheel that fails to import
        pass
    try:
        import fast_rnnt

        return fast_rnnt, "fast_rnnt"
    except Exception as e:
        raise ImportError(INSTALL_HINT) from e


_backend, BACKEND_NAME = _load_backend()

get_rnnt_logprobs = _backend.get_rnnt_logprobs
get_rnnt_logprobs_smoothed = _backend.get_rnnt_logprobs_smoothed
rnnt_loss_simple = _backend.rnnt_loss_simple
rnnt_loss_smoothed = _backend.rnnt_loss_smoothed
get_rnnt_prune_ranges = _backend.get_rnnt_prune_ranges
do_rnnt_pruning = _backend.do_rnnt_pruning
get_rnnt_logprobs_pruned = _backend.get_rnnt_logprobs_pruned
rnnt_loss_pruned = _backend.rnnt_loss_pruned
rnnt_loss = _backend.rnnt_loss
mutual_information_recursion = _backend.mutual_information_recursion



def backend_boundary(boundary: Tensor) -> Tensor:
    """``boundary`` with ``S_b`` raised to at least 1, for the backends' ``S_b >= 1`` checks.

    k2 and fast_rnnt assert ``S_b >= 1`` in ``get_rnnt_prune_ranges``,
    ``get_rnnt_logprobs_pruned`` and ``get_rnnt_logprobs_smoothed``, although
    they use ``S_b`` for nothing else that matters here (the ``-inf`` they
    write depends on ``T_b`` only). Callers keep the true boundary for
    ``mutual_information_recursion`` and for masking, so an empty sequence is
    the single lattice row ``u = 0``.
    """
    b = boundary.clone()
    b[:, 2] = b[:, 2].clamp(min=1)
    return b


__all__ = [
    "BACKEND_NAME",
    "backend_boundary",
    "INSTALL_HINT",
    "get_rnnt_logprobs",
    "get_rnnt_logprobs_smoothed",
    "rnnt_loss_simple",
    "rnnt_loss_smoothed",
    "get_rnnt_prune_ranges",
    "do_rnnt_pruning",
    "get_rnnt_logprobs_pruned",
    "rnnt_loss_pruned",
    "rnnt_loss",
    "mutual_information_recursion",
]

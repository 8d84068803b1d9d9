"""Two diagnostic splits that tell test-other's unseen voices from its reverb and noise.

test-other differs from test-clean in two ways at once: its voices are held
out of training, and every utterance has reverberation and additive noise. A
model that fails on it may fail on either. The probe splits change one factor
each and keep everything else of an existing split:

* ``test-other-clean``: test-other's utterances (text, held-out voice,
  speaking rate, pitch, padding) without their reverb and noise;
* ``test-clean-degraded``: test-clean's utterances (seen voices) with the reverb
  and noise of test-other's utterances, the i-th test-clean utterance getting
  the degradation of the i-th test-other one (cycling if test-other is shorter).

So ``test-clean-degraded`` against ``test-clean`` measures the noise on the same
utterances, and ``test-other-clean`` against ``test-clean`` the voices (on other,
equally unseen sentences). A probe utterance keeps its source's speaker and
utterance number; its chapter's split code becomes the probe's (6xxx for
test-other-clean, 7xxx for test-clean-degraded), so ids stay unique.
"""

from __future__ import annotations

from dataclasses import replace
from typing import List, Optional, Sequence

from icefall_spkd.synthetic_audio import Degradation, UttPlan

__all__ = ["PROBE_SPLITS", "robustness_probe_plans"]

PROBE_SPLITS = ("test-other-clean", "test-clean-degraded")
# Chapter split codes (the corpus's own splits use 1-5).
PROBE_CODES = {"test-other-clean": 6, "test-clean-degraded": 7}


def _probe_id(utt_id: str, split: str) -> str:
    speaker, chapter, utt = utt_id.split("-")
    return f"{speaker}-{PROBE_CODES[split] * 1000 + int(chapter) % 1000}-{utt}"


def _probe(plan: UttPlan, split: str, degradation: Optional[Degradation]) -> UttPlan:
    return replace(plan, utt_id=_probe_id(plan.utt_id, split), split=split, degradation=degradation)


def robustness_probe_plans(plans: Sequence[UttPlan]) -> List[UttPlan]:
    """The plans of the probe splits, derived from a corpus's ``test-other`` and ``test-clean``.

    Raises:
      ValueError: ``plans`` lacks test-other or test-clean utterances, or a
        test-other plan has no degradation.
    """
    other = [p for p in plans if p.split == "test-other"]
    clean = [p for p in plans if p.split == "test-clean"]
    if not other or not clean:
        raise ValueError(
            f"robustness probes need test-other and test-clean plans; got {len(other)} and {len(clean)}"
        )
    undegraded = [p.utt_id for p in other if p.degradation is None]
    if undegraded:
        raise ValueError(f"test-other utterance {undegraded[0]} has no reverb/noise to move")
    probes = [_probe(p, PROBE_SPLITS[0], None) for p in other]
    probes += [
        _probe(p, PROBE_SPLITS[1], other[i % len(other)].degradation) for i, p in enumerate(clean)
    ]
    return probes

"""decode.py's option checks and result-file names (icefall_spkd.decoding.decoding_plan)."""

from __future__ import annotations

import pytest

from icefall_spkd.decoding import decoding_plan
from icefall_spkd.utils import AttributeDict


def _params(**kw) -> AttributeDict:
    base = dict(test_sets=["dev"], max_sym_per_frame=1, decoding_method="greedy_search",
                beam_size=4, epoch=30, iter=0, avg=9, use_averaged_model=True)
    return AttributeDict({**base, **kw})


def test_names_as_written_by_hand() -> None:
    sets, suffix, key = decoding_plan(_params(test_sets=["dev,test-clean", "test-other"]),
                                      ("dev", "test-clean", "test-other"))
    assert sets == ["dev", "test-clean", "test-other"]
    assert (suffix, key) == ("epoch-30-avg-9-use-averaged-model", "greedy_search")
    _, suffix, key = decoding_plan(
        _params(decoding_method="modified_beam_search", iter=1200, avg=1, use_averaged_model=False),
        ("dev",),
    )
    assert (suffix, key) == ("iter-1200-avg-1-beam-size-4", "beam_size_4")
    _, suffix, _ = decoding_plan(_params(max_sym_per_frame=3, use_averaged_model=False), ("dev",))
    assert suffix == "epoch-30-avg-9-max-sym-per-frame-3"
    _, suffix, key = decoding_plan(
        _params(decoding_method="modified_beam_search", lm_path="lm.pt", lm_scale=0.3), ("dev",)
    )
    assert (suffix, key) == (
        "epoch-30-avg-9-use-averaged-model-beam-size-4-lm-scale-0.3",
        "beam_size_4_lm_scale_0.3",
    )
    _, suffix, _ = decoding_plan(
        _params(decoding_method="modified_beam_search", lm_path="lm.pt", lm_scale=0.4,
                lm_token_bonus=1.2, lm_lexicon="words.txt"), ("dev",)
    )
    assert suffix == "epoch-30-avg-9-use-averaged-model-beam-size-4-lm-scale-0.4-token-bonus-1.2-lexicon"
    # --max-sym-per-frame is greedy search's: a beam search's names ignore it
    _, suffix, _ = decoding_plan(
        _params(decoding_method="modified_beam_search", max_sym_per_frame=3), ("dev",)
    )
    assert suffix == "epoch-30-avg-9-use-averaged-model-beam-size-4"
    # An LM at scale 0 is no LM: the names stay those of plain search.
    _, suffix, _ = decoding_plan(
        _params(decoding_method="modified_beam_search", lm_path="lm.pt", lm_scale=0.0), ("dev",)
    )
    assert suffix == "epoch-30-avg-9-use-averaged-model-beam-size-4"


@pytest.mark.parametrize(
    "kw, message",
    [(dict(test_sets=["dev,test-opne"]), "Unknown test set 'test-opne'"),
     (dict(max_sym_per_frame=0), "--max-sym-per-frame must be >= 1"),
     (dict(lm_path="lm.pt", lm_scale=0.3), "--lm-path works with modified_beam_search only")],
)
def test_bad_options_exit_with_one_line(kw, message) -> None:
    with pytest.raises(SystemExit, match=message) as e:
        decoding_plan(_params(**kw), ("dev", "test-open"))
    assert "\n" not in str(e.value)

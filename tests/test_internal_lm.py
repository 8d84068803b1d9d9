"""The zero-encoder internal LM against a token-by-token reference and its invariants."""

from __future__ import annotations

import math

import pytest
import torch

from icefall_spkd.internal_lm import internal_lm_log_probs, perplexity
from icefall_spkd.models import build_model

torch.set_num_threads(1)

VOCAB = 7  # blank 0 and six tokens


def _model(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model({"model_preset": "tiny", "vocab_size": VOCAB, "dropout": 0.0}).eval()
    with torch.no_grad():  # make the joiner's output far from uniform
        model.joiner.output_linear.weight.mul_(8.0)
        model.joiner.encoder_proj.bias.normal_()
    return model


def _reference(model, seq, blank_id=0):
    """One token at a time: the decoder on its last ``context_size`` tokens,
    the joiner on an all-zero encoder frame, blank's probability mass removed
    by division (not by a softmax over a slice)."""
    ctx = model.decoder.context_size
    history = [blank_id] * ctx
    out = []
    with torch.no_grad():
        for tok in seq:
            dec = model.decoder(torch.tensor([history[-ctx:]]), need_pad=False)  # (1, 1, D)
            enc = torch.zeros(1, 1, model.joiner.encoder_proj.in_features)
            p = model.joiner(enc, dec)[0, 0].double().softmax(-1)
            out.append(math.log(p[tok] / (1.0 - p[blank_id])))
            history.append(tok)
    return out


def test_matches_token_by_token_reference():
    model = _model()
    seqs = [[1, 2, 3, 4, 5, 6, 1], [3], [6, 6, 2, 5]]
    got = internal_lm_log_probs(model, seqs)
    for seq, lp in zip(seqs, got):
        assert lp.shape == (len(seq),)
        assert lp.tolist() == pytest.approx(_reference(model, seq), abs=1e-5)


def test_each_position_is_a_distribution_over_real_tokens():
    model = _model(1)
    prefix = [4, 2, 5]
    seqs = [prefix + [v] for v in range(1, VOCAB)]
    last = torch.stack([lp[-1] for lp in internal_lm_log_probs(model, seqs)])
    assert float(last.logsumexp(0)) == pytest.approx(0.0, abs=1e-5)
    assert float(last.max() - last.min()) > 0.5  # not uniform: the test can see the tokens


def test_encoder_weights_do_not_matter_but_its_bias_does():
    model = _model(2)
    seqs = [[1, 3, 5, 2]]
    before = internal_lm_log_probs(model, seqs)[0]
    with torch.no_grad():
        model.joiner.encoder_proj.weight.normal_()
    assert torch.allclose(internal_lm_log_probs(model, seqs)[0], before)
    with torch.no_grad():
        model.joiner.encoder_proj.bias.add_(1.0)
    assert not torch.allclose(internal_lm_log_probs(model, seqs)[0], before, atol=1e-3)


def test_perplexity_and_bad_input():
    lps = [torch.log(torch.tensor([0.5, 0.25])), torch.log(torch.tensor([0.125]))]
    assert perplexity(lps) == pytest.approx(4.0)  # exp(6 ln 2 / 3)
    with pytest.raises(ValueError, match="blank"):
        internal_lm_log_probs(_model(), [[1, 0, 2]])
    with pytest.raises(ValueError, match="empty"):
        internal_lm_log_probs(_model(), [[1], []])
    with pytest.raises(ValueError, match="no tokens"):
        perplexity([])


def test_script_scores_the_dev_transcripts_with_the_chosen_checkpoint(tiny_librispeech, tmp_path,
                                                                      monkeypatch):  # fmt: skip
    """local/internal_lm_ppl.py: the right checkpoint, every dev sentence, the model's own tokens."""
    import argparse
    import json

    import sentencepiece as spm
    from recipe_scripts import load_recipe_script

    from icefall_spkd.checkpoint import save_checkpoint
    from icefall_spkd.data import AsrDataModule

    work = tiny_librispeech.workdir
    monkeypatch.chdir(work)
    bpe = work / "data" / "lang_bpe_500" / "bpe.model"
    sp = spm.SentencePieceProcessor(model_file=str(bpe))
    exp = tmp_path / "exp"
    models = {}
    for epoch in (1, 2):
        torch.manual_seed(epoch)
        m = build_model({"model_preset": "tiny", "vocab_size": sp.get_piece_size()}).eval()
        save_checkpoint(exp / f"epoch-{epoch}.pt", m,
                        params=dict(m.model_config, batch_idx_train=epoch))  # fmt: skip
        models[epoch] = m
    script = load_recipe_script("local/internal_lm_ppl.py")
    script.main(["--exp-dirs", str(exp), "--epoch", "2", "--avg", "1", "--use-averaged-model", "false",
                 "--bpe-model", str(bpe), "--test-set", "dev-clean", "--num-workers", "0",
                 "--manifest-dir", str(work / "data" / "fbank")])  # fmt: skip
    out = json.loads((exp / "internal-lm-dev-clean-epoch-2-avg-1.json").read_text())
    parser = argparse.ArgumentParser()
    AsrDataModule.add_arguments(parser)
    data = AsrDataModule(parser.parse_args(["--manifest-dir", str(work / "data" / "fbank")]))
    texts = [c.supervisions[0].text for c in data.decoding_cuts("dev-clean")]
    ids = [sp.encode(t) for t in texts]
    assert out["sentences"] == len(texts) > 0
    assert out["tokens"] == sum(len(s) for s in ids)
    for epoch, m in models.items():  # epoch 2 was scored, not epoch 1
        ppl = perplexity(internal_lm_log_probs(m, ids))
        assert (out["perplexity"] == pytest.approx(ppl, rel=1e-4)) == (epoch == 2)

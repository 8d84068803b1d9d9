"""The mini synthetic corpus through every prepare.sh stage to a data-module batch."""

from __future__ import annotations

import argparse
import csv

import sentencepiece as spm
import torch
from lhotse import load_manifest
from prep_fixtures import Prepared

from icefall_spkd.data import AsrDataModule

SPLITS = ["train", "dev", "test-clean", "test-other"]


def test_every_stage_ran(synthetic_prepared: Prepared) -> None:
    for stage in range(7):
        assert f"Stage {stage}:" in synthetic_prepared.log
    data = synthetic_prepared.workdir / "data"
    for split in SPLITS:
        assert (data / "manifests" / f"librispeech_recordings_{split}.jsonl.gz").is_file()
        assert (data / "manifests" / f"filter_report_{split}.tsv").is_file()
        assert (data / "fbank" / f"librispeech_cuts_{split}.jsonl.gz").is_file()
    assert (data / "lang_bpe_60" / "bpe.model").is_file()
    assert (data / "lang_bpe_60" / "tokens.txt").read_text().startswith("<blk> 0\n<sos/eos> 1\n<unk> 2\n")
    # stage 6: the token LM of the training transcripts, over the BPE model's 60 ids
    from icefall_spkd.ngram_lm import TokenNgramLm

    lm = TokenNgramLm.load(data / "lm" / "token_8gram_bpe_60.pt")
    assert (lm.order, lm.vocab_size) == (8, 60)
    # and the word 3-gram, whose vocabulary is the training transcripts' words
    from icefall_spkd.word_lm import WordNgramLm, load_ngram_lm

    word_lm = load_ngram_lm(data / "lm" / "word_3gram.pt")
    assert isinstance(word_lm, WordNgramLm) and word_lm.order == 3
    train_words = set((data / "lang_bpe_60" / "transcript_words.txt").read_text().split())
    assert set(word_lm.words) == train_words


def test_cuts_match_supervisions_and_reports(synthetic_prepared: Prepared) -> None:
    data = synthetic_prepared.workdir / "data"
    for split in SPLITS:
        sups = {s.id: s for s in load_manifest(data / "manifests" / f"librispeech_supervisions_{split}.jsonl.gz")}
        cuts = load_manifest(data / "fbank" / f"librispeech_cuts_{split}.jsonl.gz")
        with open(data / "manifests" / f"filter_report_{split}.tsv", newline="") as f:
            dropped = {r["utt_id"] for r in csv.DictReader(f, delimiter="\t") if r["action"] == "dropped"}
        assert set(cuts.ids) | dropped == set(sups), split
        assert len(cuts) > 0
        for c in cuts:
            assert c.supervisions[0].text == sups[c.id].text
            assert c.num_features == 80 and c.sampling_rate == 16000


def test_batch_from_data_module(synthetic_prepared: Prepared, monkeypatch) -> None:
    monkeypatch.chdir(synthetic_prepared.workdir)
    parser = argparse.ArgumentParser()
    AsrDataModule.add_arguments(parser)
    args = parser.parse_args(["--max-duration", "30", "--num-workers", "1", "--num-buckets", "2"])
    args.seed = 1
    dm = AsrDataModule(args)
    sp = spm.SentencePieceProcessor(model_file="data/lang_bpe_60/bpe.model")
    train = dm.train_cuts()
    batch = next(iter(dm.train_dataloaders(train)))
    x, sup = batch["inputs"], batch["supervisions"]
    cuts = sup["cut"]
    assert x.shape[0] == len(cuts) == len(sup["text"]) and x.shape[2] == 80
    assert sum(c.duration for c in cuts) <= 30
    assert x.shape[1] == max(c.num_frames for c in cuts)
    for i, c in enumerate(cuts):
        assert abs(int(sup["num_frames"][i]) - round(c.duration * 100)) <= 1
        assert sup["text"][i] == c.supervisions[0].text
        assert sup["start_frame"][i] == 0
        assert int(sup["sequence_idx"][i]) == i
        assert 2 not in sp.encode(sup["text"][i])  # no <unk> in training text
    assert torch.isfinite(x).all()
    for split in ["dev", "test-clean", "test-other"]:
        getter = {"dev": dm.dev_cuts, "test-clean": dm.test_clean_cuts, "test-other": dm.test_other_cuts}[split]
        b = next(iter(dm.test_dataloaders(getter())))
        assert b["inputs"].shape[2] == 80 and len(b["supervisions"]["cut"]) > 0

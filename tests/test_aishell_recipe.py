"""The AISHELL-1 recipe (egs/aishell/ASR) on a tiny AISHELL-shaped tree made here.

The tree (``download/aishell/data_aishell/wav/<part>/<speaker>/*.wav`` and
``transcript/aishell_transcript_v0.8.txt``; sine-plus-noise wavs) has one
utterance for each bad-input case. It goes through every prepare.sh stage
after the download (stage 0 only finds the tree), then a batch from the data
module, a few training steps with the character vocabulary and a decode that
writes CER files. Expected values are written out by hand.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set, Tuple

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "egs" / "aishell" / "ASR"

# Good utterances: (part, speaker, utt number, transcript line text as in AISHELL, seconds).
GOOD = [
    ("train", "S0002", 121, "而 对 楼市 成交 抑制 作用 最 大 的 限 购", 2.5),
    ("train", "S0002", 122, "也 成为 地方 政府 的 眼中 钉", 2.0),
    ("train", "S0002", 123, "自 六月 底 呼和浩特 市 率先 宣布 取消 限 购 后", 2.5),
    ("train", "S0002", 124, "各地 政府 便 纷纷 跟进", 2.0),
    ("train", "S0002", 125, "仅 一 个 多 月 的 时间 里", 2.0),
    ("dev", "S0724", 101, "广州 市 房地产 中介 协会 分析", 2.0),
    ("test", "S0764", 101, "甚至 出现 交易 几乎 停滞 的 情况", 2.0),
    ("test", "S0764", 102, "一 是 政策 的 落实 问题", 2.0),
]


def utt(speaker: str, n: int) -> str:
    return f"BAC009{speaker}W{n:04d}"


# utt id -> (part, reason, action) that the filter report must show.
EXPECTED = {
    utt("S0002", 150): ("train", "missing_audio", "dropped"),  # line, speaker dir, no wav
    utt("S0900", 1): ("test", "missing_audio", "dropped"),  # line, speaker in no part (S0900: test)
    utt("S0003", 160): ("train", "no_transcript", "dropped"),  # wav, no line
    utt("S0003", 161): ("train", "unsupported_characters", "dropped"),  # digits
    utt("S0003", 162): ("train", "text_normalized", "normalized"),  # full-width k, punctuation
    utt("S0003", 163): ("train", "unreadable_audio", "dropped"),  # not a wav
    utt("S0003", 164): ("train", "downmixed", "converted"),  # 44.1 kHz stereo
    utt("S0003", 165): ("train", "empty_transcript", "dropped"),  # id only
    utt("S0003", 166): ("train", "unsupported_characters", "dropped"),  # kana
    # 24 characters in 1 s: 24 chars/s passes check I, but 24 tokens > 23 frames after subsampling
    utt("S0724", 102): ("dev", "more_tokens_than_frames", "dropped"),
}
NORMALIZED_162 = "K线图好看"  # from "ｋ线 图，好 看。"
LONG_DEV = "一二三四五六七八九十" * 2 + "百千万亿"


def tone(duration: float, sr: int = 16000, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(duration * sr))) / sr
    x = (0.3 * np.sin(2 * np.pi * (150 + 40 * (seed % 5)) * t) + 0.02 * rng.standard_normal(len(t)))
    x = x.astype(np.float32)
    return np.stack([x, 0.5 * x], axis=1) if channels == 2 else x


def make_tree(root: Path) -> Tuple[Set[str], Set[str]]:
    """Write ``root/aishell/data_aishell``; return (transcript ids, wav ids)."""
    base = root / "aishell" / "data_aishell"
    lines: List[str] = []
    wavs: Set[str] = set()

    def wav(part: str, spk: str, n: int, dur: float, sr: int = 16000, channels: int = 1) -> None:
        d = base / "wav" / part / spk
        d.mkdir(parents=True, exist_ok=True)
        sf.write(str(d / f"{utt(spk, n)}.wav"), tone(dur, sr, channels, seed=n), sr)
        wavs.add(utt(spk, n))

    for part, spk, n, text, dur in GOOD:
        wav(part, spk, n, dur)
        lines.append(f"{utt(spk, n)} {text}")
    lines.append(f"{utt('S0002', 150)} 这 个 文件 不 存在")
    lines.append(f"{utt('S0900', 1)} 这 位 说话人 没有 目录")
    wav("train", "S0003", 160, 1.5)
    lines.append(f"{utt('S0003', 161)} 今天 气温 25 度")
    wav("train", "S0003", 161, 2.0)
    lines.append(f"{utt('S0003', 162)} ｋ线 图，好 看。")
    wav("train", "S0003", 162, 2.0)
    lines.append(f"{utt('S0003', 163)} 这 不是 音频")
    (base / "wav" / "train" / "S0003" / f"{utt('S0003', 163)}.wav").write_bytes(b"not a wav file" * 40)
    wavs.add(utt("S0003", 163))
    lines.append(f"{utt('S0003', 164)} 双 声道 高 采样率")
    wav("train", "S0003", 164, 2.0, sr=44100, channels=2)
    lines.append(utt("S0003", 165))
    wav("train", "S0003", 165, 1.5)
    lines.append(f"{utt('S0003', 166)} こんにちは 世界")
    wav("train", "S0003", 166, 2.0)
    lines.append(f"{utt('S0724', 102)} {LONG_DEV}")
    wav("dev", "S0724", 102, 1.0)
    (base / "transcript").mkdir(parents=True)
    (base / "transcript" / "aishell_transcript_v0.8.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {line.split()[0] for line in lines}, wavs


def _env() -> Dict[str, str]:
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run(cmd: List[str], cwd: Path, timeout: int = 300) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd[:3])} failed ({proc.returncode}):\n{proc.stdout[-6000:]}")
    return proc.stdout


def _script(name: str, *args: str) -> List[str]:
    return [sys.executable, str(RECIPE / "spkd_transducer" / name), *args]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, Set[str], Set[str]]:
    work = tmp_path_factory.mktemp("aishell_recipe")
    transcript_ids, wav_ids = make_tree(work / "download")
    log = _run(["bash", str(RECIPE / "prepare.sh"), "--nj", "1"], cwd=work)
    assert "skipping download" in log
    return work, transcript_ids, wav_ids


def _report(work: Path, part: str) -> Dict[str, Tuple[str, str, str]]:
    path = work / "data" / "manifests" / f"filter_report_{part}.tsv"
    with open(path, encoding="utf-8") as f:
        return {r["utt_id"]: (r["reason"], r["action"], r["detail"]) for r in csv.DictReader(f, delimiter="\t")}


def _fbank_cuts(work: Path, part: str):
    from lhotse import load_manifest

    return load_manifest(work / "data" / "fbank" / f"aishell_cuts_{part}.jsonl.gz")


# ------------------------------------------------------------------ library


def test_normalize_zh() -> None:
    from icefall_spkd.text_zh import UnsupportedText, normalize_zh

    assert normalize_zh("而 对 楼市 成交") == "而对楼市成交"
    assert normalize_zh("ｋ线 图，好 看。") == "K线图好看"
    assert normalize_zh("ＡＢＣ\u3000股“市”《报》！") == "ABC股市报"
    assert normalize_zh("cpi 指数") == "CPI指数"
    assert normalize_zh("，。！") == ""
    for bad, chars in (("气温 25 度", "'25'"), ("こんにちは", "'こんにちは'"), ("涨 5%", "'5%'")):
        with pytest.raises(UnsupportedText, match=chars):
            normalize_zh(bad)

    from icefall_spkd.data_checks import check_text

    assert check_text("今天 25 度", normalize_zh)[1].reason == "unsupported_characters"
    assert check_text("ｋ线 图", normalize_zh) == ("K线图", check_text("ｋ线 图", normalize_zh)[1])
    assert check_text("ｋ线 图", normalize_zh)[1].action == "normalized"


def test_char_table_and_tokenizer(tmp_path: Path) -> None:
    from icefall_spkd.text_zh import CharTokenizer, char_table, write_tokens

    table = char_table(["你好世界", "世界你们"])
    assert table == {"<blk>": 0, "<sos/eos>": 1, "<unk>": 2, "你": 3, "好": 4, "世": 5, "界": 6, "们": 7}
    write_tokens(table, tmp_path / "tokens.txt")
    assert (tmp_path / "tokens.txt").read_text(encoding="utf-8").splitlines()[:4] == [
        "<blk> 0", "<sos/eos> 1", "<unk> 2", "你 3"]
    tok = CharTokenizer(tmp_path / "tokens.txt")
    assert tok.get_piece_size() == 8 and tok.piece_to_id("<unk>") == 2
    assert tok.encode(["你们 好", "他们"], out_type=int) == [[3, 7, 4], [2, 7]]
    assert tok.decode([5, 6, 3, 7]) == "世界你们"


def test_aishell_presets_match_the_authors_sizes() -> None:
    """Teacher 86.5 M and student 13.6 M in the authors' logs, at icefall's 4,336 characters."""
    import torch

    from icefall_spkd.models.presets import build_model
    from icefall_spkd.models.presets_aishell import AISHELL_VOCAB_SIZE

    counts = {}
    for name in ("zipformer-aishell-teacher", "zipformer-aishell-student"):
        with torch.device("meta"):
            model = build_model({"model_preset": name, "vocab_size": AISHELL_VOCAB_SIZE})
        counts[name] = sum(p.numel() for p in model.parameters())
    assert abs(counts["zipformer-aishell-teacher"] / 86.5e6 - 1) < 0.01, counts
    assert abs(counts["zipformer-aishell-student"] / 13.6e6 - 1) < 0.01, counts


# ------------------------------------------------------------------ preparation


def test_manifests_through_lhotse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    """Without an unreadable wav lhotse's prepare_aishell itself runs; what it leaves out is listed."""
    import importlib.util
    import logging

    from icefall_spkd.data_checks import read_report

    make_tree(tmp_path / "download")
    (tmp_path / "download/aishell/data_aishell/wav/train/S0003" / f"{utt('S0003', 163)}.wav").unlink()
    spec = importlib.util.spec_from_file_location("prepare_aishell", RECIPE / "local" / "prepare_aishell.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "manifests"
    monkeypatch.setattr(sys, "argv", ["prepare_aishell.py", "--corpus-dir", str(tmp_path / "download/aishell"),
                                      "--output-dir", str(out)])
    with caplog.at_level(logging.WARNING):
        mod.main()
    assert "file by file" not in caplog.text
    got = {(p, i.utt_id): i.reason for p in ("train", "dev", "test") for i in read_report(out / f"prepare_issues_{p}.tsv")}
    assert got == {("train", utt("S0002", 150)): "missing_audio", ("test", utt("S0900", 1)): "missing_audio",
                   ("train", utt("S0003", 160)): "no_transcript", ("train", utt("S0003", 163)): "missing_audio"}


def test_every_bad_entry_is_reported(prepared) -> None:
    work, transcript_ids, wav_ids = prepared
    reports = {p: _report(work, p) for p in ("train", "dev", "test")}
    for utt_id, (part, reason, action) in EXPECTED.items():
        assert utt_id in reports[part], (utt_id, part, reports[part])
        assert reports[part][utt_id][:2] == (reason, action), (utt_id, reports[part][utt_id])
    # Nothing silently dropped: every transcript line and every wav is a cut or a dropped report row.
    kept = {c.id for p in ("train", "dev", "test") for c in _fbank_cuts(work, p)}
    dropped = {u for rep in reports.values() for u, (_, action, _) in rep.items() if action == "dropped"}
    assert kept | dropped == transcript_ids | wav_ids
    assert not kept & dropped
    good = {utt(spk, n) for _, spk, n, _, _ in GOOD} | {utt("S0003", 162), utt("S0003", 164)}
    assert kept == good


def test_texts_vocabulary_and_features(prepared) -> None:
    work, _, _ = prepared
    train = _fbank_cuts(work, "train")
    texts = {c.id: c.supervisions[0].text for c in train}
    assert texts[utt("S0002", 121)] == "而对楼市成交抑制作用最大的限购"
    assert texts[utt("S0003", 162)] == NORMALIZED_162
    assert all(c.num_features == 80 and c.features.sampling_rate == 16000 for c in train)
    assert {c.id for c in _fbank_cuts(work, "test")} == {utt("S0764", 101), utt("S0764", 102)}

    lines = (work / "data" / "lang_char" / "tokens.txt").read_text(encoding="utf-8").splitlines()
    # <blk>, <sos/eos>, <unk>, then the first train transcript's characters in order.
    assert lines[:3] == ["<blk> 0", "<sos/eos> 1", "<unk> 2"]
    assert [ln.split()[0] for ln in lines[3:9]] == list("而对楼市成交")
    symbols = [ln.split()[0] for ln in lines]
    assert len(symbols) == len(set(symbols)) and [int(ln.split()[1]) for ln in lines] == list(range(len(lines)))
    assert "K" in symbols and "2" not in symbols and "こ" not in symbols


def test_data_module_batch(prepared, monkeypatch: pytest.MonkeyPatch) -> None:
    from icefall_spkd.data import AsrDataModule

    work, _, _ = prepared
    monkeypatch.chdir(work)  # the feature manifests hold paths relative to the recipe directory
    parser = argparse.ArgumentParser()
    AsrDataModule.add_arguments(parser)
    args = parser.parse_args(["--manifest-dir", str(work / "data" / "fbank"), "--cuts-prefix", "aishell",
                              "--num-workers", "0", "--max-duration", "100", "--enable-spec-aug", "false",
                              "--bucketing-sampler", "false", "--drop-last", "false"])
    dm = AsrDataModule(args)
    batch = next(iter(dm.train_dataloaders(dm.train_cuts())))
    assert batch["inputs"].ndim == 3 and batch["inputs"].shape[2] == 80
    assert set(batch["supervisions"]["text"]) <= {c.supervisions[0].text for c in _fbank_cuts(work, "train")}
    assert batch["inputs"].shape[0] == 7 and NORMALIZED_162 in batch["supervisions"]["text"]


# ------------------------------------------------------------------ training and decoding

TINY_MODEL = ["--model-preset", "tiny", "--encoder-dim", "32", "--num-encoder-layers", "1", "--num-heads", "2",
              "--feedforward-dim", "64", "--cnn-module-kernel", "3", "--decoder-dim", "32", "--joiner-dim", "32"]


def _edit_distance(a: List[str], b: List[str]) -> int:
    d = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, d[0] = d[0], i
        for j, y in enumerate(b, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (x != y))
    return d[len(b)]


def test_train_and_decode_with_characters(prepared) -> None:
    import re

    work, _, _ = prepared
    exp = work / "exp"
    common = ["--exp-dir", str(exp), "--manifest-dir", "data/fbank", "--num-workers", "0", "--num-buckets", "2",
              *TINY_MODEL]
    log = _run(_script("train.py", *common, "--world-size", "1", "--num-epochs", "1", "--max-duration", "6",
                       "--tensorboard", "false", "--log-interval", "1", "--valid-interval", "0",
                       "--enable-spec-aug", "false", "--lr-warmup-batches", "0"), cwd=work)
    assert (exp / "epoch-1.pt").is_file(), log
    train_log = "".join(f.read_text() for f in (exp / "log").glob("log-train*"))
    lines = (work / "data" / "lang_char" / "tokens.txt").read_text(encoding="utf-8").splitlines()
    symbols = [ln.split()[0] for ln in lines]
    assert f"'vocab_size': {len(symbols)}" in train_log
    assert re.search(r"global_batch 2, batch_loss [0-9.]+", train_log), train_log[-2000:]

    # SP-KD with the character vocabulary: that run as the teacher (its vocabulary size is checked).
    kd = work / "exp_kd"
    _run(_script("train.py", *common[2:], "--exp-dir", str(kd), "--world-size", "1", "--num-epochs", "1",
                 "--max-duration", "6", "--tensorboard", "false", "--log-interval", "1", "--valid-interval", "0",
                 "--enable-spec-aug", "false", "--teacher-checkpoint", str(exp / "epoch-1.pt"),
                 "--kd-loss", "pkd", "--kd-scale", "0.011", "--kd-sampler", "teacher", "--kd-sampling-scale", "1.0"),
         cwd=work)
    kd_log = "".join(f.read_text() for f in (kd / "log").glob("log-train*"))
    assert re.search(r"kd_loss=[0-9.e-]+, kd_samp_loss=[0-9.e-]+", kd_log), kd_log[-2000:]

    _run(_script("decode.py", *common, "--epoch", "1", "--avg", "1", "--use-averaged-model", "false",
                 "--max-duration", "20"), cwd=work)
    out = exp / "greedy_search"
    for s in ("dev", "test"):
        suffix = f"{s}-epoch-1-avg-1"
        errs = (out / f"errs-{suffix}.txt").read_text(encoding="utf-8")
        summary = (out / f"wer-summary-{suffix}.txt").read_text(encoding="utf-8").splitlines()
        # Units: reference characters and hypothesis tokens (a special symbol stays one unit).
        refs, hyps = [], []
        for line in (out / f"recogs-{suffix}.txt").read_text(encoding="utf-8").splitlines():
            m = re.match(r"\S+:\s+(ref|hyp)=(.*)$", line)
            if m:
                (refs if m.group(1) == "ref" else hyps).append(m.group(2).split())
        assert refs and all(len(u) == 1 for r in refs for u in r)
        assert {"".join(r) for r in refs} <= {"广州市房地产中介协会分析", "甚至出现交易几乎停滞的情况", "一是政策的落实问题"}
        assert {u for h in hyps for u in h} <= set(symbols)
        n_ref = sum(len(r) for r in refs)
        cer = 100 * sum(_edit_distance(r, h) for r, h in zip(refs, hyps)) / n_ref
        char_cer = 100 * sum(_edit_distance(r, list("".join(h))) for r, h in zip(refs, hyps)) / n_ref
        assert f"%WER = {cer:.2f} [" in errs, (cer, errs[:400])
        assert f"%CER = {char_cer:.2f} [" in errs, (char_cer, errs[:400])
        header, row = summary[0].split("\t"), summary[1].split("\t")
        assert float(row[header.index("WER")]) == pytest.approx(cer, abs=0.01)
        assert float(row[header.index("CER")]) == pytest.approx(char_cer, abs=0.01)


def _wrapper(name: str, monkeypatch: pytest.MonkeyPatch):
    """A spkd_transducer script imported in this process (its directory on sys.path, as when run)."""
    import importlib.util

    monkeypatch.syspath_prepend(str(RECIPE / "spkd_transducer"))
    path = RECIPE / "spkd_transducer" / name
    spec = importlib.util.spec_from_file_location(f"aishell_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_scripts_parse(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """Every wrapper parses --help; AISHELL's defaults are set (the dry run is the test above)."""
    train = _wrapper("train.py", monkeypatch).get_parser()
    args = train.parse_args([])
    assert (args.tokens, args.bpe_model, args.cuts_prefix, args.model_preset) == (
        "data/lang_char/tokens.txt", None, "aishell", "zipformer-aishell-student")
    args = _wrapper("decode.py", monkeypatch).get_parser().parse_args([])
    assert (args.tokens, args.cuts_prefix, args.test_sets) == ("data/lang_char/tokens.txt", "aishell", ["dev", "test"])
    assert train.parse_args(["--model-preset", "zipformer-aishell-teacher"]).model_preset == "zipformer-aishell-teacher"
    for name in ("train.py", "decode.py", "export.py", "pretrained.py"):
        with pytest.raises(SystemExit) as e:
            _wrapper(name, monkeypatch).main(["--help"])
        assert e.value.code == 0
        assert "usage:" in capsys.readouterr().out, name

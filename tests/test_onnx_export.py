"""ONNX export for sherpa-onnx, checked against the PyTorch model and sherpa-onnx itself.

A tiny Conformer transducer is trained here (about 300 updates, well under a
minute on 2 cores) on a synthetic "tone language": each token 3..11 is a
sine of its own frequency, so the model learns to emit real tokens and the
agreement checks are not satisfied by empty outputs. Its global CMVN
statistics are set from the training features (far from identity), so the
exported encoder must carry them. Then:

- ``export-onnx.py`` writes the ONNX files (from ``pretrained.pt`` and from
  ``--exp-dir --epoch --avg``);
- a few dozen unseen utterances, written as 16-bit WAV files, are decoded
  three ways: the project's PyTorch greedy search on the project's training
  features, ``onnx_pretrained.py`` and
  ``sherpa_onnx.OfflineRecognizer.from_transducer(..., "greedy_search")``,
  both of which compute their own features from the WAV files;
- the token sequences must agree for >= 95 % of utterances (each difference
  is logged with the feature difference, the smallest top-2 logit margin on
  the PyTorch path and whether ``<unk>`` was involved), and the int8 files'
  WER must be within 1 point of fp32;
- bad inputs get one-line errors naming the file.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import pytest
import soundfile as sf
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
sherpa_onnx = pytest.importorskip("sherpa_onnx")

from recipe_scripts import load_recipe_script  # noqa: E402

from icefall_spkd.features import make_fbank_extractor, sherpa_fbank  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "egs/librispeech/ASR/spkd_transducer"
SR = 16000
NUM_TONES = 9  # tokens 3..11
SYMBOLS = ["<blk>", "<sos/eos>", "<unk>"] + [f"\u2581{chr(ord('A') + i)}" for i in range(NUM_TONES)]
MODEL = {
    "model_preset": "tiny", "vocab_size": len(SYMBOLS), "encoder_dim": 64,
    "num_encoder_layers": 2, "num_heads": 4, "feedforward_dim": 128, "cnn_module_kernel": 15,
    "decoder_dim": 64, "joiner_dim": 64, "dropout": 0.0,
}
NUM_TRAIN, NUM_TEST, STEPS, BATCH = 200, 36, 300, 16


def tone_utterance(rng: np.random.Generator, tokens: Sequence[int]) -> np.ndarray:
    """Token k is a sine at ``250 * 1.25**(k-3)`` Hz, 0.12-0.2 s, between short noisy gaps."""

    def gap(lo: float, hi: float) -> np.ndarray:
        return rng.normal(0, 0.003, int(SR * rng.uniform(lo, hi)))

    parts = [gap(0.1, 0.2)]
    for k in tokens:
        d = rng.uniform(0.12, 0.2)
        t = np.arange(int(SR * d)) / SR
        env = np.minimum(1.0, np.minimum(t, d - t) / 0.01)
        f = 250 * 1.25 ** (k - 3)
        parts.append(rng.uniform(0.2, 0.5) * env * np.sin(2 * np.pi * f * t + rng.uniform(0, 6))
                     + rng.normal(0, 0.003, len(t)))
        parts.append(gap(0.04, 0.1))
    parts.append(gap(0.1, 0.2))
    x = np.concatenate(parts)
    return (np.round(np.clip(x, -1, 1) * 32767) / 32768).astype(np.float32)  # 16-bit exact


def _run(script: str, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(SCRIPTS / script), *args], capture_output=True,
                          text=True, cwd=REPO, timeout=300)
    if ok and proc.returncode != 0:
        raise AssertionError(f"{script} failed:\n{proc.stderr[-4000:]}")
    return proc


def _one_line_error(proc: subprocess.CompletedProcess, must_name: Path, *words: str) -> str:
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    lines = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert len(lines) == 1, proc.stderr[-4000:]
    assert str(must_name) in lines[0] and all(w in lines[0] for w in words), lines[0]
    return lines[0]


def _pad(feats: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    x_lens = torch.tensor([len(f) for f in feats])
    return torch.nn.utils.rnn.pad_sequence(feats, batch_first=True, padding_value=-23.0259), x_lens


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Dict:
    """Train the tiny model, save pretrained.pt + two epoch checkpoints, write the test WAVs."""
    from icefall_spkd.checkpoint import save_checkpoint
    from icefall_spkd.models.presets import build_model

    root = tmp_path_factory.mktemp("onnx")
    rng = np.random.default_rng(0)
    extractor = make_fbank_extractor()
    utts = []
    for i in range(NUM_TRAIN + NUM_TEST):
        toks = [int(k) for k in rng.integers(3, 3 + NUM_TONES, size=int(rng.integers(4, 9)))]
        wav = tone_utterance(rng, toks)
        feats = torch.as_tensor(extractor.extract(wav, SR), dtype=torch.float32)
        utts.append((f"utt{i:03d}", wav, feats, toks))
    train, test = utts[:NUM_TRAIN], utts[NUM_TRAIN:]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # more threads only add OpenMP barrier waits on a busy machine
    torch.manual_seed(0)
    model = build_model(MODEL)
    all_feats = torch.cat([u[2] for u in train[:100]])
    model.encoder.set_feature_stats(all_feats.mean(0), all_feats.std(0))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    exp = root / "exp"
    params = dict(model.model_config, average_period=1)
    try:
        for step in range(1, STEPS + 1):
            batch = [train[i] for i in rng.choice(len(train), BATCH, replace=False)]
            x, x_lens = _pad([u[2] for u in batch])
            simple, pruned = model(x, x_lens, [u[3] for u in batch], prune_range=5)
            n = sum(len(u[3]) for u in batch)
            loss = (0.5 * simple + (0.1 if step < 50 else 1.0) * pruned) / n
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            if step in (STEPS - 50, STEPS):
                save_checkpoint(exp / f"epoch-{1 if step < STEPS else 2}.pt", model,
                                params=dict(params, batch_idx_train=step))
    finally:
        torch.set_num_threads(threads)
    model.eval()
    ckpt = root / "pretrained.pt"
    torch.save({"model": model.state_dict(), "params": dict(model.model_config)}, ckpt)
    tokens = root / "tokens.txt"
    tokens.write_text("".join(f"{s} {i}\n" for i, s in enumerate(SYMBOLS)), encoding="utf-8")
    wav_dir = root / "wav"
    wav_dir.mkdir()
    for uid, wav, _, _ in test:
        sf.write(str(wav_dir / f"{uid}.wav"), wav, SR, subtype="PCM_16")
    out = root / "onnx"
    _run("export-onnx.py", "--checkpoint", str(ckpt), "--tokens", str(tokens), "--output-dir", str(out))
    return {"root": root, "model": model, "ckpt": ckpt, "tokens": tokens, "test": test,
            "wav_dir": wav_dir, "onnx": out, "exp": exp}


def test_front_end_matches_sherpa(tmp_path: Path):
    """Training fbank == sherpa-onnx's kaldi-native-fbank on a WAV with digital silence."""
    import kaldi_native_fbank as knf

    rng = np.random.default_rng(1)
    wav = np.concatenate([np.zeros(4000, np.float32), tone_utterance(rng, [3, 7, 11, 5]),
                          np.zeros(3000, np.float32)])
    ref = sherpa_fbank(wav)
    backends = ["lhotse"]
    try:
        import kaldifeat  # noqa: F401

        backends.append("kaldifeat")
    except Exception:
        pass
    for backend in backends:
        ours = make_fbank_extractor(backend).extract(wav, SR)
        assert ours.shape == ref.shape, (backend, ours.shape, ref.shape)
        gap = np.abs(ours - ref)
        logging.info(f"fbank {backend} vs kaldi-native-fbank (sherpa settings): max |diff| "
                     f"{gap.max():.2e}, mean {gap.mean():.2e}")
        # Float rounding only: the largest gaps sit in near-empty bins (log energy
        # around -14, i.e. relative error of a tiny power), the typical one is 1e-6.
        assert gap.max() < 5e-3 and gap.mean() < 1e-4, (backend, gap.max(), gap.mean())

    # The check can fail: kaldi's default high_freq (0 = Nyquist) instead of -400 does.
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = False
    opts.mel_opts.num_bins = 80
    opts.mel_opts.high_freq = 0.0
    fb = knf.OnlineFbank(opts)
    fb.accept_waveform(SR, wav)
    fb.input_finished()
    other = np.stack([fb.get_frame(i) for i in range(fb.num_frames_ready)])
    assert np.abs(other - ref).mean() > 0.01


def test_layout_metadata_and_cmvn(trained: Dict):
    """Shapes, metadata, and the encoder (CMVN included) equal to PyTorch."""
    from icefall_spkd.onnx_export import OnnxTransducer, read_meta_data

    d = trained["onnx"]
    names = {p.name for p in d.iterdir()}
    for k in ("encoder", "decoder", "joiner"):
        assert {f"{k}.onnx", f"{k}.int8.onnx"} <= names
    assert "tokens.txt" in names
    enc_meta = read_meta_data(d / "encoder.onnx")
    assert enc_meta["model_type"] == "conformer"
    dec_meta = read_meta_data(d / "decoder.onnx")
    assert dec_meta == {"vocab_size": str(len(SYMBOLS)), "context_size": "2"}

    model = trained["model"]
    ot = OnnxTransducer(d / "encoder.onnx", d / "decoder.onnx", d / "joiner.onnx")
    x, x_lens = _pad([u[2] for u in trained["test"][:5]])
    with torch.no_grad():
        enc, enc_lens = model.forward_encoder(x, x_lens)
        enc = model.joiner.encoder_proj(enc)
    o_enc, o_lens = ot.run_encoder(x.numpy(), x_lens.numpy())
    assert o_enc.shape == tuple(enc.shape) and o_lens.tolist() == enc_lens.tolist()
    for i, n in enumerate(enc_lens.tolist()):
        np.testing.assert_allclose(o_enc[i, :n], enc[i, :n].numpy(), atol=1e-4)
    # The CMVN statistics matter: without them the encoder output is far off.
    assert float(model.encoder.feature_mean.abs().mean()) > 3.0  # far from identity
    with torch.no_grad():
        mean0 = model.encoder.feature_mean.clone()
        model.encoder.feature_mean.zero_()
        try:
            enc_id = model.joiner.encoder_proj(model.forward_encoder(x, x_lens)[0])
        finally:
            model.encoder.feature_mean.copy_(mean0)
    assert float((enc_id - enc).abs().max()) > 0.1


def _edits(hyps: Sequence[Sequence[int]], refs: Sequence[Sequence[int]]) -> float:
    """WER (%) over tokens, by dynamic programming."""
    errs = total = 0
    for h, r in zip(hyps, refs):
        d = list(range(len(h) + 1))
        for i in range(1, len(r) + 1):
            prev, d[0] = d[0], i
            for j in range(1, len(h) + 1):
                cur = min(d[j] + 1, d[j - 1] + 1, prev + (r[i - 1] != h[j - 1]))
                prev, d[j] = d[j], cur
        errs += d[len(h)]
        total += len(r)
    return 100.0 * errs / total


def _sherpa_decode(onnx_dir: Path, wav_paths: Sequence[Path], int8: bool) -> List[List[int]]:
    sfx = ".int8" if int8 else ""
    rec = sherpa_onnx.OfflineRecognizer.from_transducer(
        encoder=str(onnx_dir / f"encoder{sfx}.onnx"), decoder=str(onnx_dir / f"decoder{sfx}.onnx"),
        joiner=str(onnx_dir / f"joiner{sfx}.onnx"), tokens=str(onnx_dir / "tokens.txt"),
        num_threads=1, decoding_method="greedy_search",
    )
    # sherpa-onnx's symbol table shows the BPE word boundary "\u2581" as a space.
    sym2id = {s.replace("\u2581", " "): i for i, s in enumerate(SYMBOLS)}
    streams = []
    for p in wav_paths:
        samples, rate = sf.read(str(p), dtype="float32")
        s = rec.create_stream()
        s.accept_waveform(rate, samples)
        streams.append(s)
    rec.decode_streams(streams)
    return [[sym2id[t] for t in s.result.tokens] for s in streams]


def _onnx_pretrained_decode(onnx_dir: Path, wav_paths: Sequence[Path], int8: bool) -> List[List[int]]:
    sfx = ".int8" if int8 else ""
    proc = _run("onnx_pretrained.py",
                "--encoder-model-filename", str(onnx_dir / f"encoder{sfx}.onnx"),
                "--decoder-model-filename", str(onnx_dir / f"decoder{sfx}.onnx"),
                "--joiner-model-filename", str(onnx_dir / f"joiner{sfx}.onnx"),
                "--tokens", str(onnx_dir / "tokens.txt"), *map(str, wav_paths))
    out = {}
    for line in proc.stdout.splitlines():
        path, _, text = line.partition(": ")
        out[path] = [SYMBOLS.index("\u2581" + w) for w in text.split()]
    return [out[str(p)] for p in wav_paths]


def _why(model: torch.nn.Module, utt: Tuple, onnx_dir: Path) -> str:
    """Evidence for a difference: feature gap, smallest top-2 margin on the PyTorch path, <unk>."""
    from icefall_spkd.search import greedy_search_batch

    _, wav, feats, _ = utt
    feat_gap = float(np.abs(feats.numpy() - sherpa_fbank(wav)).max())
    with torch.no_grad():
        enc, enc_lens = model.forward_encoder(feats[None], torch.tensor([len(feats)]))
        hyp = greedy_search_batch(model, enc, enc_lens)[0]
        ctx = [0, 0]
        margins = []
        e = model.joiner.encoder_proj(enc[0])
        k = 0
        for t in range(int(enc_lens[0])):
            dec = model.joiner.decoder_proj(model.decoder(torch.tensor([ctx]), need_pad=False)[0, 0])
            logits = model.joiner(e[t], dec, project_input=False)
            top2 = logits.topk(2).values
            margins.append(float(top2[0] - top2[1]))
            y = int(logits.argmax())
            if y != 0 and k < len(hyp):
                ctx = [ctx[-1], y]
                k += 1
    return (f"max |feature diff| {feat_gap:.1e}, smallest top-2 logit margin on the PyTorch path "
            f"{min(margins):.2e}, <unk> in PyTorch output: {2 in hyp}")


def test_three_way_agreement_and_int8(trained: Dict, caplog):
    from icefall_spkd.search import greedy_search_batch

    caplog.set_level(logging.INFO)
    model, test, onnx_dir = trained["model"], trained["test"], trained["onnx"]
    refs = [u[3] for u in test]
    x, x_lens = _pad([u[2] for u in test])
    with torch.no_grad():
        enc, enc_lens = model.forward_encoder(x, x_lens)
        torch_hyps = greedy_search_batch(model, enc, enc_lens)
    wavs = [trained["wav_dir"] / f"{u[0]}.wav" for u in test]
    ort_hyps = _onnx_pretrained_decode(onnx_dir, wavs, int8=False)
    sherpa_hyps = _sherpa_decode(onnx_dir, wavs, int8=False)

    emitted = sum(len(h) for h in torch_hyps)
    assert emitted >= 0.5 * sum(len(r) for r in refs), (emitted, "the model emits too few tokens")
    agree = 0
    for utt, a, b, c in zip(test, torch_hyps, ort_hyps, sherpa_hyps):
        if a == b == c:
            agree += 1
        else:
            logging.warning(f"{utt[0]} differs: pytorch {a} onnx_pretrained {b} sherpa {c}; "
                            f"{_why(model, utt, onnx_dir)}")
    wer_torch = _edits(torch_hyps, refs)
    wer_fp32 = _edits(sherpa_hyps, refs)
    int8_sherpa = _sherpa_decode(onnx_dir, wavs, int8=True)
    int8_ort = _onnx_pretrained_decode(onnx_dir, wavs, int8=True)
    wer_int8 = _edits(int8_sherpa, refs)
    logging.info(
        f"agreement {agree}/{len(test)}; tokens emitted {emitted} (references "
        f"{sum(map(len, refs))}); WER PyTorch {wer_torch:.2f} sherpa fp32 {wer_fp32:.2f} "
        f"sherpa int8 {wer_int8:.2f} onnx_pretrained int8 {_edits(int8_ort, refs):.2f}"
    )
    assert agree >= 0.95 * len(test)
    assert wer_torch < 50.0  # the model recognises the tones
    assert abs(wer_int8 - wer_fp32) <= 1.0
    assert int8_ort == int8_sherpa  # same int8 graphs, same search


def test_export_from_exp_dir_average(trained: Dict):
    """--exp-dir --epoch 2 --avg 2: the encoder equals the hand-averaged weights."""
    from icefall_spkd.models.presets import build_model
    from icefall_spkd.onnx_export import OnnxTransducer

    exp, out = trained["exp"], trained["root"] / "onnx_avg"
    _run("export-onnx.py", "--exp-dir", str(exp), "--epoch", "2", "--avg", "2",
         "--use-averaged-model", "false", "--tokens",
         str(trained["tokens"]), "--output-dir", str(out), "--int8", "false")
    sds = [torch.load(exp / f"epoch-{e}.pt", weights_only=False)["model"] for e in (1, 2)]
    model = build_model(MODEL)
    model.load_state_dict({k: (sds[0][k].double() + sds[1][k].double()).div(2).to(v.dtype)
                           if v.is_floating_point() else v for k, v in sds[1].items()})
    model.eval()
    x, x_lens = _pad([u[2] for u in trained["test"][:3]])
    with torch.no_grad():
        enc = model.joiner.encoder_proj(model.forward_encoder(x, x_lens)[0])
    o_enc, _ = OnnxTransducer(out / "encoder.onnx", out / "decoder.onnx",
                              out / "joiner.onnx").run_encoder(x.numpy(), x_lens.numpy())
    n = int(((x_lens[0] - 1) // 2 - 1) // 2)
    np.testing.assert_allclose(o_enc[0, :n], enc[0, :n].numpy(), atol=1e-4)


def test_bad_inputs(trained: Dict, tmp_path: Path):
    root, tokens, ckpt, onnx_dir = trained["root"], trained["tokens"], trained["ckpt"], trained["onnx"]
    # Checkpoints of the wrong kind.
    not_torch = tmp_path / "notes.pt"
    not_torch.write_text("not a checkpoint")
    no_model = tmp_path / "optimizer.pt"
    torch.save({"optimizer": {"state": {}}}, no_model)
    other_net = tmp_path / "other.pt"
    torch.save({"model": torch.nn.Linear(3, 4).state_dict(), "params": {"model_preset": "tiny"}},
               other_net)
    # The scripts in-process (SystemExit carries the message) ...
    export = load_recipe_script("spkd_transducer/export-onnx.py")
    short = tmp_path / "tokens_short.txt"  # a tokens file that does not match the model
    short.write_text("".join(f"{s} {i}\n" for i, s in enumerate(SYMBOLS[:-2])), encoding="utf-8")
    cases = [((bad, tokens), bad, "pretrained.pt") for bad in (no_model, other_net)]
    cases.append(((ckpt, short), short, "vocab_size=12"))
    for (c, t), name, word in cases:
        with pytest.raises(SystemExit) as ei:
            export.main(["--checkpoint", str(c), "--tokens", str(t), "--output-dir", str(tmp_path / "o")])
        msg = str(ei.value)
        assert "\n" not in msg and str(name) in msg and word in msg, msg
    onnx_pre = load_recipe_script("spkd_transducer/onnx_pretrained.py")
    with pytest.raises(SystemExit) as ei:
        onnx_pre.main(["--encoder-model-filename", str(onnx_dir / "encoder.onnx"),
                       "--decoder-model-filename", str(onnx_dir / "decoder.onnx"),
                       "--joiner-model-filename", str(onnx_dir / "joiner.onnx"), "--tokens", str(short),
                       str(trained["wav_dir"] / "utt200.wav")])
    assert "\n" not in str(ei.value) and str(short) in str(ei.value) and "vocab_size=12" in str(ei.value)
    # ... and as command lines: one line on stderr, no traceback.
    proc = _run("export-onnx.py", "--checkpoint", str(not_torch), "--tokens", str(tokens),
                "--output-dir", str(tmp_path / "o"), ok=False)
    _one_line_error(proc, not_torch, "pretrained.pt")
    # A 44.1 kHz WAV given to onnx_pretrained.py.
    wav44 = tmp_path / "cd_quality.wav"
    sf.write(str(wav44), np.zeros(44100, np.float32), 44100)
    proc = _run("onnx_pretrained.py", "--encoder-model-filename", str(onnx_dir / "encoder.onnx"),
                "--decoder-model-filename", str(onnx_dir / "decoder.onnx"),
                "--joiner-model-filename", str(onnx_dir / "joiner.onnx"), "--tokens", str(tokens),
                str(wav44), ok=False)
    _one_line_error(proc, wav44, "44100 Hz", "16000", "sox")
    assert root.exists()


def test_sherpa_onnx_decode_script(trained: Dict, tmp_path: Path, capsys):
    """The demo's last step: sherpa_onnx_decode.py on files (any rate) and on a cut manifest.

    Its hypotheses must be sherpa-onnx's own, its references the manifest's,
    and its WER the edit distance computed here.
    """
    from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet

    script = load_recipe_script("spkd_transducer/sherpa_onnx_decode.py")
    test = trained["test"][:3]
    wavs = [trained["wav_dir"] / f"{uid}.wav" for uid, *_ in test]
    refs = [[SYMBOLS[t][1:] for t in toks] for *_, toks in test]
    expected = [
        " ".join(SYMBOLS[t][1:] for t in h) for h in _sherpa_decode(trained["onnx"], wavs, False)
    ]
    assert sum(len(h.split()) for h in expected) >= 10  # the model emits tokens

    recordings = RecordingSet.from_recordings(
        Recording.from_file(w, recording_id=uid) for w, (uid, *_) in zip(wavs, test)
    )
    supervisions = SupervisionSet.from_segments(
        SupervisionSegment(id=uid, recording_id=uid, start=0.0,
                           duration=recordings[uid].duration, text=" ".join(ref))
        for (uid, *_), ref in zip(test, refs)
    )  # fmt: skip
    cuts = tmp_path / "cuts.jsonl.gz"
    CutSet.from_manifests(recordings=recordings, supervisions=supervisions).to_file(cuts)
    onnx = str(trained["onnx"])
    script.main(["--onnx-dir", onnx, "--int8", "false", "--cuts", str(cuts), "--num-utts", "3"])
    out = capsys.readouterr().out.splitlines()
    assert [line[5:] for line in out if line.startswith("REF: ")] == [" ".join(r) for r in refs]
    hyps = [line[5:] for line in out if line.startswith("HYP: ")]
    assert hyps == expected
    assert f"WER {_edits([h.split() for h in hyps], refs):.2f} %" in out[-1]

    # a 44.1 kHz stereo copy gives the same text as the 16 kHz original
    x, _ = sf.read(str(wavs[0]), dtype="float32")
    from scipy.signal import resample_poly

    hi = resample_poly(x, 441, 160).astype(np.float32)
    stereo = tmp_path / "stereo44k.wav"
    sf.write(str(stereo), np.stack([hi, hi], axis=1), 44100, subtype="PCM_24")
    script.main(["--onnx-dir", onnx, "--int8", "false", str(wavs[0]), str(stereo)])
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{wavs[0]}: {expected[0]}", f"{stereo}: {expected[0]}"]


def test_zipformer_exports_and_sherpa_loads_it(tmp_path: Path):
    """A Zipformer (random weights, perturbed) exports; onnxruntime's encoder and joiner
    equal PyTorch's on a padded batch of lengths the export never saw; sherpa-onnx
    loads the files as a zipformer2 transducer and decodes."""
    from icefall_spkd.models.presets import build_model
    from icefall_spkd.onnx_export import OnnxTransducer, export_onnx, read_meta_data

    torch.manual_seed(0)
    model = build_model({"model_preset": "zipformer-synth-student", "vocab_size": len(SYMBOLS)})
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1 + 0.1 * torch.randn_like(p))
    model.eval()
    paths = export_onnx(model, tmp_path / "onnx", SYMBOLS, int8=False)
    assert read_meta_data(paths["encoder"])["model_type"] == "zipformer2"
    ort = OnnxTransducer(paths["encoder"], paths["decoder"], paths["joiner"])
    x = torch.randn(2, 157, 80)
    x_lens = torch.tensor([157, 101])
    with torch.no_grad():
        enc, enc_lens = model.forward_encoder(x, x_lens)
        enc = model.joiner.encoder_proj(enc)
    got, got_lens = ort.run_encoder(x.numpy(), x_lens.numpy())
    assert got_lens.tolist() == enc_lens.tolist()
    for b, n in enumerate(enc_lens.tolist()):
        assert np.abs(got[b, :n] - enc[b, :n].numpy()).max() < 1e-4

    rec = sherpa_onnx.OfflineRecognizer.from_transducer(
        encoder=str(paths["encoder"]), decoder=str(paths["decoder"]), joiner=str(paths["joiner"]),
        tokens=str(tmp_path / "onnx" / "tokens.txt"), num_threads=1,
        decoding_method="greedy_search",
    )
    s = rec.create_stream()
    s.accept_waveform(SR, np.random.default_rng(0).uniform(-0.3, 0.3, SR).astype(np.float32))
    rec.decode_stream(s)
    assert isinstance(s.result.text, str)

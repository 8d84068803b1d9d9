"""End-to-end tests of the recipe scripts on a tiny random corpus.

The corpus (a few seconds of random fbank features with short texts, and a
tiny unigram BPE model) is built once per session in a temporary
``egs``-like directory; train.py/decode.py run there as subprocesses with
``--num-workers 0`` and the ``tiny`` preset shrunk further.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "egs" / "librispeech" / "ASR" / "spkd_transducer"


WORDS = ["HELLO", "WORLD", "SPEECH", "MODEL", "TINY", "TEST", "DATA", "CAT", "DOG", "RUN"]

# A very small model so that a CPU step takes milliseconds.
MODEL_ARGS = [
    "--model-preset", "tiny",
    "--encoder-dim", "32",
    "--num-encoder-layers", "1",
    "--num-heads", "2",
    "--feedforward-dim", "64",
    "--cnn-module-kernel", "3",
    "--decoder-dim", "32",
    "--joiner-dim", "32",
]


def _make_cuts(root: Path, part: str, n: int, rng: np.random.Generator) -> List[str]:
    from lhotse import CutSet, MonoCut, SupervisionSegment
    from lhotse.features.base import Features
    from lhotse.features.io import NumpyFilesWriter

    fbank_dir = root / "data" / "fbank"
    fbank_dir.mkdir(parents=True, exist_ok=True)
    cuts, texts = [], []
    with NumpyFilesWriter(fbank_dir / f"feats_{part}") as writer:
        for i in range(n):
            num_frames = int(rng.integers(150, 250))
            dur = num_frames * 0.01
            feats = rng.normal(size=(num_frames, 80)).astype(np.float32)
            key = writer.write(f"{part}-{i}", feats)
            text = " ".join(rng.choice(WORDS, size=int(rng.integers(2, 4))))
            texts.append(text)
            cid = f"{part}-{i}"
            cuts.append(
                MonoCut(
                    id=cid,
                    start=0.0,
                    duration=dur,
                    channel=0,
                    features=Features(
                        type="fbank",
                        num_frames=num_frames,
                        num_features=80,
                        frame_shift=0.01,
                        sampling_rate=16000,
                        start=0.0,
                        duration=dur,
                        storage_type=writer.name,
                        storage_path=str(writer.storage_path),
                        storage_key=key,
                        recording_id=cid,
                        channels=0,
                    ),
                    supervisions=[
                        SupervisionSegment(
                            id=cid, recording_id=cid, start=0.0, duration=dur, channel=0, text=text
                        )
                    ],
                )
            )
    CutSet.from_cuts(cuts).to_file(fbank_dir / f"librispeech_cuts_{part}.jsonl.gz")
    return texts


def _train_bpe(root: Path, texts: List[str]) -> Path:
    import sentencepiece as spm

    lang = root / "data" / "lang_bpe_30"
    lang.mkdir(parents=True, exist_ok=True)
    (lang / "transcript_words.txt").write_text("\n".join(texts) + "\n")
    spm.SentencePieceTrainer.train(
        input=str(lang / "transcript_words.txt"),
        model_prefix=str(lang / "bpe"),
        model_type="unigram",
        vocab_size=30,
        character_coverage=1.0,
        user_defined_symbols=["<blk>", "<sos/eos>"],
        unk_id=2,
        bos_id=-1,
        eos_id=-1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=str(lang / "bpe.model"))
    lines = [f"{sp.id_to_piece(i)} {i}\n" for i in range(sp.get_piece_size())]
    (lang / "tokens.txt").write_text("".join(lines))
    return lang / "bpe.model"


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    pytest.importorskip("icefall_spkd.data", reason="icefall_spkd/data.py is not available")
    pytest.importorskip("icefall_spkd.models.presets")
    root = tmp_path_factory.mktemp("egs")
    rng = np.random.default_rng(0)
    texts = _make_cuts(root, "train", 12, rng)
    for part in ("dev", "test-clean", "test-other", "dev-clean", "dev-other"):
        texts += _make_cuts(root, part, 3, rng)
    _train_bpe(root, texts)
    return root


def _common_args(corpus: Path, exp_dir: Path) -> List[str]:
    return [
        "--exp-dir", str(exp_dir),
        "--bpe-model", str(corpus / "data" / "lang_bpe_30" / "bpe.model"),
        "--manifest-dir", str(corpus / "data" / "fbank"),
        "--num-workers", "0",
        *MODEL_ARGS,
    ]


def _data_args() -> List[str]:
    """Options of AsrDataModule that make the tiny run deterministic and quick."""
    out = ["--max-duration", "6"]
    import argparse

    from icefall_spkd.data import AsrDataModule

    p = argparse.ArgumentParser()
    AsrDataModule.add_arguments(p)
    known = {a for action in p._actions for a in action.option_strings}
    for flag, value in (
        ("--enable-spec-aug", "true"),  # random, so exact resume is a stronger check
        ("--spec-aug-time-warp-factor", "20"),
        ("--bucketing-sampler", "true"),
        ("--num-buckets", "2"),
        ("--shuffle", "true"),
    ):
        if flag in known:
            out += [flag, value]
    return out


def _run(
    script: str,
    args: List[str],
    cwd: Path,
    timeout: int = 240,
    launcher: Optional[List[str]] = None,
) -> subprocess.CompletedProcess:
    """Run a recipe script (with ``launcher``, e.g. torchrun, instead of the interpreter)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        env.pop(k, None)
    proc = subprocess.run(
        [*(launcher or [sys.executable]), str(RECIPE / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    return proc


def _train_args(corpus: Path, exp_dir: Path, *extra: str) -> List[str]:
    return [
        *_common_args(corpus, exp_dir),
        *_data_args(),
        "--world-size", "1",
        "--num-epochs", "2",
        "--seed", "7",
        "--base-lr", "0.002",
        "--lr-warmup-batches", "0",
        "--warm-step", "4",
        "--save-every-n", "3",
        "--keep-last-k", "20",
        "--average-period", "1",
        "--valid-interval", "4",
        "--log-interval", "1",
        "--tensorboard", "false",
        *extra,
    ]


# train.py trains on the GPU when there is one. There, atomic adds reorder some
# sums (index backward, the CUDA RNN-T kernels), so a resumed run matches the
# uninterrupted one to float rounding rather than to the bit (seen on an H200:
# logged losses equal to 7 digits); on the CPU resumption is exact.
ON_GPU = torch.cuda.is_available()


def logged_equal(a: str, b: str) -> bool:
    """Two logged values (10 significant digits) equal: to the digit on the CPU, to 1e-5 on the GPU."""
    return float(a) == pytest.approx(float(b), rel=1e-5) if ON_GPU else a == b


def assert_same_losses(full: Dict[int, str], resumed: Dict[int, str]) -> None:
    """The resumed run's logged batch losses equal the full run's at the same batches."""
    assert resumed and set(resumed) <= set(full), (sorted(resumed), sorted(full))
    for b, v in resumed.items():
        assert logged_equal(v, full[b]), (b, v, full[b])


def assert_same_weights(
    a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor], cpu_atol: float = 0.0
) -> None:
    """Two state dicts equal: to ``cpu_atol`` (default bit for bit) on the CPU, to
    float rounding on the GPU."""
    assert a.keys() == b.keys()
    for k, v in a.items():
        if ON_GPU:
            assert torch.allclose(v.float(), b[k].float(), rtol=1e-3, atol=1e-5), k
        else:
            assert torch.allclose(v, b[k], rtol=0, atol=cpu_atol) if cpu_atol else torch.equal(v, b[k]), k


def needs_two_ranks_here() -> pytest.MarkDecorator:
    """Two-process runs: gloo on the CPU; on a GPU machine each rank needs its own GPU."""
    return pytest.mark.skipif(
        ON_GPU and torch.cuda.device_count() < 2,
        reason="train.py puts each rank on its own GPU and this machine has one",
    )


_LOSS_RE = re.compile(r"global_batch (\d+), batch_loss (\S+),")


def _batch_losses(exp_dir: Path) -> Dict[int, str]:
    """global batch -> logged batch loss, over every log file of the run."""
    out: Dict[int, str] = {}
    for f in sorted((exp_dir / "log").glob("log-train*")):
        for m in _LOSS_RE.finditer(f.read_text()):
            out[int(m.group(1))] = m.group(2)
    return out


@pytest.fixture(scope="session")
def trained(corpus: Path, tmp_path_factory) -> Path:
    """One uninterrupted 2-epoch run shared by the resume and decode tests (do not modify)."""
    full = tmp_path_factory.mktemp("full") / "exp"
    _run("train.py", _train_args(corpus, full), cwd=corpus)
    return full


@pytest.mark.slow
def test_resume_from_checkpoint_reproduces_losses(corpus: Path, trained: Path, tmp_path: Path) -> None:
    full = trained
    losses_full = _batch_losses(full)
    n_batches = max(losses_full)
    assert n_batches >= 6, losses_full
    assert (full / "epoch-1.pt").is_file() and (full / "epoch-2.pt").is_file()
    assert (full / "checkpoint-3.pt").is_file()

    # Resume a copy of the run from checkpoint-3.pt (mid epoch 1).
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    (resumed / "checkpoint-3.pt").write_bytes((full / "checkpoint-3.pt").read_bytes())
    _run("train.py", _train_args(corpus, resumed, "--start-batch", "3"), cwd=corpus)
    losses_res = _batch_losses(resumed)
    assert min(losses_res) == 4
    assert_same_losses(losses_full, losses_res)

    a = torch.load(full / "epoch-2.pt", weights_only=False)
    b = torch.load(resumed / "epoch-2.pt", weights_only=False)
    assert_same_weights(a["model"], b["model"])
    assert_same_weights(a["model_avg"], b["model_avg"], cpu_atol=1e-12)  # the running average
    assert a["batch_idx_train"] == b["batch_idx_train"]


@pytest.mark.slow
def test_exp_dir_layout_as_icefall(trained: Path) -> None:
    """epoch-N.pt, checkpoint-<batch>.pt, best-{train,valid}-loss.pt, log/log-train-<date>."""
    names = {p.name for p in trained.iterdir()}
    assert {"epoch-1.pt", "epoch-2.pt", "best-train-loss.pt", "best-valid-loss.pt", "log"} <= names
    assert not [n for n in names if n.startswith("batch-")]  # no batch was skipped
    logs = [p.name for p in (trained / "log").iterdir()]
    assert logs and all(re.fullmatch(r"log-train-\d{4}(-\d\d){5}", n) for n in logs), logs
    best = torch.load(trained / "best-valid-loss.pt", weights_only=False)
    epoch = torch.load(trained / f"epoch-{best['best_valid_epoch']}.pt", weights_only=False)
    for k, v in best["model"].items():
        assert torch.equal(v, epoch["model"][k]), k


@pytest.mark.slow
def test_resume_from_epoch_reproduces_losses(corpus: Path, trained: Path, tmp_path: Path) -> None:
    full = trained
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    (resumed / "epoch-1.pt").write_bytes((full / "epoch-1.pt").read_bytes())
    _run("train.py", _train_args(corpus, resumed, "--start-epoch", "2"), cwd=corpus)
    assert_same_losses(_batch_losses(full), _batch_losses(resumed))


def _ddp_logs(exp: Path) -> Dict[int, str]:
    """rank -> text of its log file (``log-train-<date>-<rank>``, as icefall names them)."""
    out = {}
    for f in (exp / "log").glob("log-train-*"):
        out[int(f.name.rsplit("-", 1)[1])] = f.read_text()
    return out


@pytest.mark.slow
@needs_two_ranks_here()
def test_torchrun_matches_world_size_2(corpus: Path, tmp_path: Path) -> None:
    """torchrun --standalone --nproc-per-node 2 (gloo on CPU) == train.py --world-size 2."""
    spawned, launched = tmp_path / "spawn", tmp_path / "torchrun"
    args = _train_args(corpus, spawned)
    args[args.index("--num-epochs") + 1] = "1"
    args[args.index("--world-size") + 1] = "2"
    _run("train.py", [*args, "--master-port", str(29500 + os.getpid() % 1000)], cwd=corpus)

    targs = _train_args(corpus, launched)
    targs[targs.index("--num-epochs") + 1] = "1"
    i = targs.index("--world-size")
    del targs[i : i + 2]  # torchrun says how many processes there are
    _run(
        "train.py", targs, cwd=corpus,
        launcher=[sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"],
    )  # fmt: skip

    a = torch.load(spawned / "epoch-1.pt", weights_only=False)
    b = torch.load(launched / "epoch-1.pt", weights_only=False)
    assert a["batch_idx_train"] == b["batch_idx_train"] >= 2
    assert a["model_avg"] is not None and b["model_avg"] is not None
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for k, v in a["model_avg"].items():
        assert torch.equal(v, b["model_avg"][k]), k

    for exp, launcher in ((spawned, "spawn"), (launched, "torchrun")):
        logs = _ddp_logs(exp)
        assert sorted(logs) == [0, 1], sorted((exp / "log").iterdir())
        for rank, text in logs.items():
            assert f"launcher='{launcher}'" in text
            # The lhotse sampler of each process draws its own shard.
            assert f"Training sampler shard: rank {rank} of 2" in text
        assert _batch_losses(exp)  # rank 0 logs its losses


def test_torchrun_environment() -> None:
    from icefall_spkd.distributed import launch_from_environ

    assert launch_from_environ({}) is None
    env = launch_from_environ(
        {"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4"}
    )
    assert (env.rank, env.local_rank, env.world_size, env.local_world_size) == (5, 1, 8, 4)
    assert env.launcher == "torchrun"
    with pytest.raises(ValueError, match="not LOCAL_RANK, WORLD_SIZE"):
        launch_from_environ({"RANK": "0"})
    with pytest.raises(ValueError, match="RANK=3"):
        launch_from_environ({"RANK": "3", "LOCAL_RANK": "0", "WORLD_SIZE": "2"})


def _decode(corpus: Path, exp: Path, method: str, sets: List[str], *extra: str) -> None:
    """decode.py at epoch 2, --avg 1 and the default --use-averaged-model (true)."""
    args = [*_common_args(corpus, exp), *_data_args(), "--epoch", "2", "--avg", "1"]
    args += ["--decoding-method", method, "--test-sets", *sets, *extra]
    _run("decode.py", args, cwd=corpus)


@pytest.mark.slow
def test_decode_and_export(corpus: Path, trained: Path, tmp_path: Path) -> None:
    import shutil

    exp = tmp_path / "exp"
    shutil.copytree(trained, exp)
    common = _common_args(corpus, exp)
    tokens = str(corpus / "data" / "lang_bpe_30" / "tokens.txt")
    base = "epoch-2-avg-1-use-averaged-model"  # --use-averaged-model is true by default
    all_sets = ["test-clean", "test-other", "dev-clean", "dev-other", "dev"]

    # --bpe-model (still accepted) and --tokens give the same transcripts.
    _decode(corpus, exp, "greedy_search", ["dev", "test-clean,test-other"])
    by_bpe = {s: (exp / "greedy_search" / f"recogs-{s}-{base}.txt").read_text() for s in ("dev", "test-other")}
    assert "ref=" in by_bpe["dev"]
    i = common.index("--bpe-model")
    with_tokens = [*common[:i], "--tokens", tokens, *common[i + 2 :]]
    args = [*with_tokens, *_data_args(), "--epoch", "2", "--avg", "1", "--test-sets", *all_sets]
    _run("decode.py", args, cwd=corpus)
    for s in all_sets:  # icefall's LibriSpeech names, each its own set, and the synthetic dev
        for kind in ("recogs", "errs", "wer-summary"):
            assert (exp / "greedy_search" / f"{kind}-{s}-{base}.txt").is_file(), (kind, s)
    for s, text in by_bpe.items():
        assert (exp / "greedy_search" / f"recogs-{s}-{base}.txt").read_text() == text
    assert list((exp / "greedy_search").glob(f"log-decode-{base}-*"))

    for method, extra, suffix in (
        ("modified_beam_search", ["--beam-size", "2"], base + "-beam-size-2"),
        ("beam_search", ["--beam-size", "2"], base + "-beam-size-2"),
        ("greedy_search", ["--max-sym-per-frame", "3"], base + "-max-sym-per-frame-3"),
    ):
        _decode(corpus, exp, method, ["dev-other"], *extra)
        for kind in ("recogs", "errs", "wer-summary"):
            assert (exp / method / f"{kind}-dev-other-{suffix}.txt").is_file(), (method, kind)

    # export.py: the plain mean of the last two epochs (the averaged model needs --epoch > --avg).
    _run(
        "export.py",
        [*common[:2], "--tokens", tokens, *MODEL_ARGS, "--epoch", "2", "--avg", "2",
         "--use-averaged-model", "false"],
        cwd=corpus,
    )  # fmt: skip
    pre = torch.load(exp / "pretrained.pt", weights_only=False)
    assert set(pre) == {"model", "params"}
    assert pre["params"]["encoder_dim"] == 32

    import soundfile as sf

    wav = tmp_path / "noise.wav"
    sf.write(wav, (np.random.default_rng(1).normal(size=16000) * 0.1).astype("float32"), 16000)
    outs = []
    for vocab in (["--tokens", tokens], ["--bpe-model", common[3]]):
        proc = _run(
            "pretrained.py",
            ["--checkpoint", str(exp / "pretrained.pt"), *vocab, "--method", "beam_search",
             "--beam-size", "2", str(wav)],
            cwd=corpus,
        )  # fmt: skip
        assert f"{wav}:" in proc.stdout
        outs.append(proc.stdout)
    assert outs[0] == outs[1]


@pytest.mark.slow
def test_kd_teacher_input_clean_runs(corpus: Path, trained: Path, tmp_path: Path) -> None:
    """--kd-teacher-input clean: SpecAugment moves from the loader to the student's copy."""
    exp = tmp_path / "kd"
    args = _train_args(
        corpus, exp, "--num-epochs", "1", "--teacher-checkpoint", str(trained / "epoch-2.pt"),
        "--kd-loss", "pkd", "--kd-sampler", "none", "--kd-teacher-input", "clean",
    )  # fmt: skip
    _run("train.py", args, cwd=corpus)
    log = "".join(f.read_text() for f in (exp / "log").glob("log-train*"))
    assert "KD teacher input: clean features; SpecAugment applied to the student's copy" in log
    assert "SpecAugment on, time warp factor" not in log  # not in the loader as well
    assert (exp / "epoch-1.pt").is_file()


def test_use_averaged_model_needs_epoch_above_avg(tmp_path: Path) -> None:
    from icefall_spkd.decoding import load_averaged_weights
    from icefall_spkd.utils import AttributeDict

    params = AttributeDict(exp_dir=tmp_path, epoch=2, avg=2, iter=0, use_averaged_model=True)
    with pytest.raises(ValueError, match="--use-averaged-model false"):
        load_averaged_weights(params)


def test_token_table_text(tmp_path: Path) -> None:
    from icefall_spkd.decoding import TokenTable

    f = tmp_path / "tokens.txt"
    f.write_text("<blk> 0\n<sos/eos> 1\n<unk> 2\n\u2581HE 3\nLLO 4\n\u2581WORLD 5\n")
    table = TokenTable(f)
    assert table.vocab_size == 6
    assert table.decode([3, 4, 5]) == "HELLO WORLD"
    assert table.decode([]) == ""
    f.write_text("<blk> 0\n\u2581A 2\n")
    with pytest.raises(ValueError, match="without gaps"):
        TokenTable(f)
    f.write_text("\u2581A 0\n")
    with pytest.raises(ValueError, match="<blk>"):
        TokenTable(f)


class _Cut:
    def __init__(self, cid: str) -> None:
        self.id = cid


class _NanModel(torch.nn.Module):
    """Returns a non-finite simple loss for every batch."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, x, x_lens, y, **kw):
        return self.w.sum() * float("nan"), self.w.sum()


class _FakeSP:
    def encode(self, texts, out_type=int):
        return [[3] for _ in texts]


def test_max_bad_batches_aborts_with_cut_ids(caplog, tmp_path: Path) -> None:
    from icefall_spkd.optim import Eden, build_optimizer
    from icefall_spkd.training import TooManyBadBatches, get_params, train_one_epoch

    params = get_params()
    params.update(
        sp=_FakeSP(), prune_range=5, am_scale=0.0, lm_scale=0.25, simple_loss_scale=0.5,
        warm_step=10, use_fp16=False, use_bf16=False, max_bad_batches=2, average_period=100,
        save_every_n=100, keep_last_k=1, log_interval=100, valid_interval=0, exp_dir=tmp_path,
    )
    model = _NanModel()
    opt = build_optimizer(model, lr=1e-3)
    batches = [
        {
            "inputs": torch.zeros(1, 20, 80),
            "supervisions": {"text": ["A"], "cut": [_Cut(f"bad-{i}")], "sequence_idx": torch.tensor([0]),
                             "num_frames": torch.tensor([20])},
        }
        for i in range(3)
    ]
    with pytest.raises(TooManyBadBatches, match="bad-1"):
        train_one_epoch(
            params, model, opt, Eden(opt, 10, 2), batches, [], torch.amp.GradScaler("cuda", enabled=False)
        )
    assert "bad-0" in caplog.text and "non-finite" in caplog.text
    assert torch.equal(model.w.detach(), torch.ones(1))  # no update from a bad batch
    assert sorted(p.name for p in tmp_path.glob("batch-*.pt")) == ["batch-1-1.pt", "batch-1-2.pt"]

"""Knowledge distillation in the training loop (teacher handling, KD flags, logging, resume).

Reuses the tiny corpus (the ``corpus`` fixture, shared through ``conftest.py``)
and the helpers of ``test_train.py``. A small teacher
(encoder/decoder/joiner dim 48) is trained for 8 epochs (40 batches) once per
module; students use ``test_train.MODEL_ARGS`` (dim 32), so teacher and student
have different architectures and the teacher's is read from its checkpoint.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch
from test_train import (
    RECIPE,
    WORDS,
    _batch_losses,
    _run,
    _train_args,
    _train_bpe,
    assert_same_losses,
    assert_same_weights,
    logged_equal,
    needs_two_ranks_here,
)

TEACHER_ARGS = [
    "--model-preset", "tiny",
    "--encoder-dim", "48",
    "--num-encoder-layers", "1",
    "--num-heads", "2",
    "--feedforward-dim", "96",
    "--cnn-module-kernel", "3",
    "--decoder-dim", "48",
    "--joiner-dim", "48",
]


def _train_module():
    spec = importlib.util.spec_from_file_location("spkd_train", RECIPE / "train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _bpe(corpus: Path) -> str:
    return str(corpus / "data" / "lang_bpe_30" / "bpe.model")


@pytest.fixture(scope="module")
def teacher_exp(corpus: Path, tmp_path_factory) -> Path:
    """A teacher trained for 8 epochs (40 batches) on the tiny corpus; ``epoch-8.pt`` is used."""
    exp = tmp_path_factory.mktemp("teacher") / "exp"
    args = _train_args(
        corpus, exp, *TEACHER_ARGS,
        "--num-epochs", "8", "--base-lr", "0.005", "--save-every-n", "1000", "--valid-interval", "0",
    )
    _run("train.py", args, cwd=corpus)
    assert (exp / "epoch-8.pt").is_file()
    return exp


def _params(corpus: Path, teacher_file: Path, *extra: str):
    """Params as train.py's ``run`` builds them, BPE loaded and KD options validated."""
    from icefall_spkd.teacher import validate_kd_params
    from icefall_spkd.training import get_params, load_bpe

    args = _train_module().get_parser().parse_args(
        [
            "--bpe-model", _bpe(corpus),
            "--model-preset", "tiny", "--encoder-dim", "32", "--num-encoder-layers", "1",
            "--num-heads", "2", "--feedforward-dim", "64", "--cnn-module-kernel", "3",
            "--decoder-dim", "32", "--joiner-dim", "32",
            "--teacher-checkpoint", str(teacher_file),
            "--kd-loss", "pkd",
            *extra,
        ]
    )
    params = get_params()
    params.update(vars(args))
    validate_kd_params(params)
    params.sp = load_bpe(params)
    return params


def _fake_batches(n: int, seed: int = 0) -> List[Dict]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        lens = torch.tensor([200, 160])
        out.append(
            {
                "inputs": torch.from_numpy(rng.normal(size=(2, 200, 80)).astype(np.float32)),
                "supervisions": {
                    "text": [" ".join(rng.choice(WORDS, size=2)) for _ in range(2)],
                    "sequence_idx": torch.tensor([0, 1]),
                    "num_frames": lens,
                },
            }
        )
    return out


# --------------------------------------------------------------------------- #
# (a) the teacher is frozen
# --------------------------------------------------------------------------- #
def test_teacher_frozen_not_in_optimizer(corpus: Path, teacher_exp: Path, tmp_path: Path) -> None:
    from icefall_spkd.models.presets import build_model
    from icefall_spkd.optim import Eden, build_optimizer
    from icefall_spkd.teacher import compute_kd_terms, make_kd_generator
    from icefall_spkd.training import load_teacher, train_one_epoch
    from icefall_spkd.utils import pad_token_ids

    params = _params(
        corpus, teacher_exp / "epoch-8.pt",
        "--kd-sampler", "teacher", "--kd-num-samples", "2", "--exp-dir", str(tmp_path),
        "--save-every-n", "1000", "--valid-interval", "0", "--log-interval", "1",
    )
    teacher = load_teacher(params, torch.device("cpu"))
    assert teacher is not None and not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}

    torch.manual_seed(0)
    student = build_model(params)
    opt = build_optimizer(student, lr=1e-3)
    teacher_ids = {id(p) for p in teacher.parameters()}
    assert not any(id(p) in teacher_ids for g in opt.param_groups for p in g["params"])
    s_before = {k: v.clone() for k, v in student.state_dict().items()}

    train_one_epoch(
        params, student, opt, Eden(opt, 10, 2), _fake_batches(2), [],
        torch.amp.GradScaler("cuda", enabled=False), teacher=teacher,
        kd_generator=make_kd_generator(1, 0),
    )
    assert student.training and not teacher.training  # student.train() did not touch it
    teacher.train()  # nor does an explicit call
    assert not teacher.training and not any(m.training for m in teacher.modules())
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in teacher.parameters())
    assert any(not torch.equal(v, s_before[k]) for k, v in student.state_dict().items())

    # The KD terms alone send gradient to the student and none to the teacher.
    batch = _fake_batches(1, seed=1)[0]
    y = params.sp.encode(batch["supervisions"]["text"], out_type=int)
    y_padded, y_lens = pad_token_ids(y)
    x, x_lens = batch["inputs"], batch["supervisions"]["num_frames"]
    student.zero_grad(set_to_none=True)
    s_out = student(x, x_lens, y, return_outputs=True)
    terms = compute_kd_terms(params, teacher, student, s_out, x, x_lens, y_padded, y_lens,
                             make_kd_generator(1, 0))
    (terms["kd"] + terms["kd_samp"]).backward()
    assert student.joiner.output_linear.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.encoder.parameters())
    assert all(p.grad is None for p in teacher.parameters())


# --------------------------------------------------------------------------- #
# (b) strict loading, vocabulary and option checks
# --------------------------------------------------------------------------- #
def _pretrained(tmp_path: Path, name: str, sd: Dict, params: Dict) -> Path:
    f = tmp_path / name
    torch.save({"model": sd, "params": params}, f)
    return f


def test_teacher_loading_errors(corpus: Path, teacher_exp: Path, tmp_path: Path) -> None:
    from icefall_spkd.checkpoint import CheckpointError
    from icefall_spkd.models.presets import build_model
    from icefall_spkd.teacher import TeacherError
    from icefall_spkd.training import load_teacher

    cpu = torch.device("cpu")
    ck = torch.load(teacher_exp / "epoch-8.pt", weights_only=False)
    cfg = dict(build_model({**ck, "model_preset": "tiny"}).model_config)
    sd = ck["model"]

    # a pretrained.pt loads; its architecture comes from its params
    good = _pretrained(tmp_path, "pretrained.pt", sd, cfg)
    t = load_teacher(_params(corpus, good, "--teacher-use-averaged-model", "true"), cpu)
    assert t.joiner.output_linear.weight.shape[1] == 48

    # averaged weights of an epoch file
    t = load_teacher(_params(corpus, teacher_exp / "epoch-8.pt", "--teacher-use-averaged-model", "true"), cpu)
    w = ck["model_avg"]["joiner.output_linear.weight"].float()
    assert torch.equal(t.joiner.output_linear.weight, w)

    # renamed key: both names and the file in the message
    bad = dict(sd)
    bad["simple_am_proj.w"] = bad.pop("simple_am_proj.weight")
    f = _pretrained(tmp_path, "renamed.pt", bad, cfg)
    with pytest.raises(CheckpointError, match=r"renamed\.pt") as e:
        load_teacher(_params(corpus, f), cpu)
    assert "simple_am_proj.weight" in str(e.value) and "simple_am_proj.w" in str(e.value)

    # missing key
    bad = {k: v for k, v in sd.items() if k != "decoder.embedding.weight"}
    f = _pretrained(tmp_path, "missing.pt", bad, cfg)
    with pytest.raises(CheckpointError, match=r"missing\.pt[\s\S]*decoder\.embedding\.weight"):
        load_teacher(_params(corpus, f), cpu)

    # vocabulary mismatch (a teacher of another BPE model)
    other = build_model({**cfg, "vocab_size": 40}).state_dict()
    f = _pretrained(tmp_path, "vocab40.pt", other, {**cfg, "vocab_size": 40})
    with pytest.raises(TeacherError, match="output vocabulary of 40.*has 30"):
        load_teacher(_params(corpus, f), cpu)

    # same size, different pieces: the recorded bpe_model is compared with the student's
    lang = tmp_path / "other_bpe"
    other_bpe = _train_bpe(lang, ["ALPHA BETA GAMMA DELTA", "EPSILON ZETA ETA THETA"] * 5)
    f = _pretrained(tmp_path, "otherbpe.pt", sd, {**cfg, "bpe_model": str(other_bpe)})
    with pytest.raises(TeacherError, match="pieces differ"):
        load_teacher(_params(corpus, f), cpu)

    # no recorded architecture: one line naming the file and what to use instead
    f = tmp_path / "bare.pt"
    torch.save({"model": sd}, f)
    with pytest.raises(TeacherError, match=r"bare\.pt does not record the teacher's architecture"):
        load_teacher(_params(corpus, f), cpu)


def test_kd_flag_validation(corpus: Path, teacher_exp: Path) -> None:
    from icefall_spkd.teacher import TeacherError, validate_kd_params
    from icefall_spkd.training import get_params

    parser = _train_module().get_parser()

    def check(*argv: str) -> None:
        params = get_params()
        params.update(vars(parser.parse_args(list(argv))))
        validate_kd_params(params)

    ck = str(teacher_exp / "epoch-8.pt")
    with pytest.raises(TeacherError, match="needs a teacher"):
        check("--kd-loss", "pkd")
    with pytest.raises(TeacherError, match="needs a KD loss"):
        check("--kd-sampler", "teacher")
    with pytest.raises(TeacherError, match="--kd-loss is none"):
        check("--teacher-checkpoint", ck)
    with pytest.raises(TeacherError, match="--kd-num-samples >= 1"):
        check("--teacher-checkpoint", ck, "--kd-loss", "pkd", "--kd-num-samples", "0")
    with pytest.raises(TeacherError, match="applies to --kd-loss pkd only"):
        check("--teacher-checkpoint", ck, "--kd-loss", "full", "--kd-node-weights", "posterior")
    with pytest.raises(TeacherError, match="--kd-temperature"):
        check("--teacher-checkpoint", ck, "--kd-loss", "pkd", "--kd-temperature", "0")
    check("--teacher-checkpoint", ck, "--kd-loss", "collapsed", "--kd-sampler", "batch")
    with pytest.raises(SystemExit):  # argparse choices
        check("--kd-loss", "bogus")


# --------------------------------------------------------------------------- #
# (c, d, e) end-to-end runs of train.py with KD
# --------------------------------------------------------------------------- #
_LINE_RE = re.compile(r"global_batch (\d+), batch_loss (\S+), loss\[\[([^\]]*)\]\]")


def _batch_metrics(exp_dir: Path) -> Dict[int, Dict[str, str]]:
    """global batch -> the per-batch metrics as logged (strings, per frame)."""
    out: Dict[int, Dict[str, str]] = {}
    for f in sorted((exp_dir / "log").glob("log-train*")):
        for m in _LINE_RE.finditer(f.read_text()):
            d = dict(kv.split("=") for kv in m.group(3).split(", "))
            d["batch_loss"] = m.group(2)
            out[int(m.group(1))] = d
    return out


def _student_args(corpus: Path, exp: Path, teacher: Path, *extra: str) -> List[str]:
    return _train_args(
        corpus, exp,
        "--num-epochs", "6", "--base-lr", "0.005", "--valid-interval", "0",
        "--teacher-checkpoint", str(teacher), "--kd-loss", "pkd", "--kd-scale", "0.5",
        *extra,
    )


def _assert_kd_decreases(metrics: Dict[int, Dict[str, str]], key: str) -> None:
    """Mean of the last 3 batches' per-frame ``key`` is below half that of the first 3.

    From scratch the student is near-uniform, ~3 nats/frame away from the
    teacher; after 30 batches it is ~0.05 (a ~60x drop in the observed runs), so
    a factor of 2 is a clear decrease with a wide margin for numerical noise
    across machines and library versions, while a KD term that does not train
    the student (e.g. a detached student) stays flat and fails it.
    """
    batches = sorted(metrics)
    assert len(batches) >= 20, batches
    first = np.mean([float(metrics[b][key]) for b in batches[:3]])
    last = np.mean([float(metrics[b][key]) for b in batches[-3:]])
    assert np.isfinite(first) and first > 0
    assert last < 0.5 * first, (key, first, last)


@pytest.mark.slow
def test_pkd_run_lowers_kd_term(corpus: Path, teacher_exp: Path, tmp_path: Path) -> None:
    exp = tmp_path / "pkd"
    _run("train.py", _student_args(corpus, exp, teacher_exp / "epoch-8.pt", "--kd-sampler", "none",
                                   "--save-every-n", "1000"), cwd=corpus)
    m = _batch_metrics(exp)
    assert all("kd_loss" in v and "kd_samp_loss" not in v for v in m.values())
    _assert_kd_decreases(m, "kd_loss")


@pytest.fixture(scope="module")
def spkd_exp(corpus: Path, teacher_exp: Path, tmp_path_factory) -> Path:
    """The SP-KD run of the CLI test (teacher sampler, N = 2), with tensorboard."""
    exp = tmp_path_factory.mktemp("spkd") / "exp"
    args = _student_args(
        corpus, exp, teacher_exp / "epoch-8.pt",
        "--kd-sampler", "teacher", "--kd-num-samples", "2", "--kd-sampling-scale", "1.0",
        "--tensorboard", "true", "--valid-interval", "10",
    )
    _run("train.py", args, cwd=corpus)
    return exp


@pytest.mark.slow
def test_spkd_cli_logs_kd_terms(spkd_exp: Path) -> None:
    log = "".join(f.read_text() for f in (spkd_exp / "log").glob("log-train*"))
    for key in ("kd_loss=", "kd_samp_loss=", "kd_samp_tokens=", "kd_samp_empty=", "kd_ref_tokens="):
        assert key in log, key
    valid = [ln for ln in log.splitlines() if "validation: [" in ln]
    assert valid and all("kd_loss=" in ln and "kd_samp_loss=" in ln for ln in valid)
    events = b"".join(f.read_bytes() for f in (spkd_exp / "tensorboard").glob("events*"))
    for tag in (b"train/current_kd_loss", b"train/current_kd_samp_loss", b"train/valid_kd_loss",
                b"train/tot_kd_samp_empty"):
        assert tag in events, tag
    ck = torch.load(spkd_exp / "checkpoint-3.pt", weights_only=False)
    states = ck["kd_generator_state"]  # one per rank; a single process here
    assert isinstance(states, list) and len(states) == 1 and isinstance(states[0], str)
    assert ck["teacher_checkpoint"]
    assert not any(k.startswith("teacher") for k in ck["model"])  # the teacher is not saved


@pytest.mark.slow
def test_spkd_run_lowers_kd_terms(spkd_exp: Path) -> None:
    m = _batch_metrics(spkd_exp)
    _assert_kd_decreases(m, "kd_loss")
    _assert_kd_decreases(m, "kd_samp_loss")


@pytest.mark.slow
def test_kd_resume_from_checkpoint_is_exact(
    corpus: Path, teacher_exp: Path, spkd_exp: Path, tmp_path: Path
) -> None:
    full = _batch_metrics(spkd_exp)
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    (resumed / "checkpoint-12.pt").write_bytes((spkd_exp / "checkpoint-12.pt").read_bytes())
    args = _student_args(
        corpus, resumed, teacher_exp / "epoch-8.pt",
        "--kd-sampler", "teacher", "--kd-num-samples", "2", "--kd-sampling-scale", "1.0",
        "--valid-interval", "10", "--start-batch", "12",
    )
    _run("train.py", args, cwd=corpus)
    res = _batch_metrics(resumed)
    assert min(res) == 13 and max(res) == max(full)
    for b, v in res.items():  # batch_loss (10 digits) and every KD term
        assert v.keys() == full[b].keys()
        assert all(logged_equal(x, full[b][n]) for n, x in v.items()), (b, v, full[b])
    assert_same_losses({b: m["batch_loss"] for b, m in full.items()}, _batch_losses(resumed))
    a = torch.load(spkd_exp / "epoch-6.pt", weights_only=False)
    c = torch.load(resumed / "epoch-6.pt", weights_only=False)
    assert_same_weights(a["model"], c["model"])
    assert a["kd_generator_state"] == c["kd_generator_state"]


@pytest.mark.slow
@needs_two_ranks_here()
def test_kd_ddp_two_processes(corpus: Path, teacher_exp: Path, tmp_path: Path) -> None:
    """Under DDP each rank holds its own unwrapped teacher; the student stays in sync."""
    import os

    exp = tmp_path / "ddp"
    args = _student_args(corpus, exp, teacher_exp / "epoch-8.pt", "--kd-sampler", "teacher",
                         "--kd-num-samples", "2", "--save-every-n", "1000")
    args[args.index("--world-size") + 1] = "2"
    args += ["--num-epochs", "1", "--master-port", str(29600 + os.getpid() % 1000)]
    _run("train.py", args, cwd=corpus)
    logs = sorted((exp / "log").glob("log-train*"))
    assert len(logs) == 2
    # the validation after the epoch is identical on both ranks: same student weights
    valid = [[ln.split("validation: ")[1] for ln in f.read_text().splitlines() if "validation: " in ln]
             for f in logs]
    assert valid[0] and valid[0] == valid[1] and "kd_samp_loss=" in valid[0][0]
    assert (exp / "epoch-1.pt").is_file()
    # Each rank's own KD generator state is saved (rank 0 writes the file), so a
    # mid-epoch resume gives every rank its own random stream back.
    states = torch.load(exp / "epoch-1.pt", weights_only=False)["kd_generator_state"]
    assert isinstance(states, list) and len(states) == 2 and states[0] != states[1]

    from icefall_spkd.training import _kd_state_for_rank

    ckpt = {"kd_generator_state": states, "_filename": "epoch-1.pt"}
    assert _kd_state_for_rank(ckpt, 1, 2) == states[1]
    with pytest.raises(ValueError, match="epoch-1.pt holds KD generator states of 2"):
        _kd_state_for_rank(ckpt, 0, 1)


# --------------------------------------------------------------------------- #
# one set of KD defaults
# --------------------------------------------------------------------------- #
def test_kd_defaults_agree_across_train_table_and_demo() -> None:
    """train.py, run_table.py (KD_SETTINGS) and run_demo.sh use the tuned values of KDOptions."""
    from recipe_scripts import load_recipe_script

    from icefall_spkd.kd_options import DEFAULTS
    from icefall_spkd.results_table import KD_SETTINGS

    # the values tuned on dev (RESULTS.md, "Tuning the KD settings"), by hand
    tuned = dict(kd_scale=2.0, kd_sampling_scale=0.5, kd_temperature=1.0, kd_prune_range=5,
                 kd_sample_temperature=1.0)  # fmt: skip
    assert KD_SETTINGS == tuned
    train_args = vars(_train_module().get_parser().parse_args([]))
    table_args = vars(load_recipe_script("local/run_table.py").get_parser().parse_args([]))
    for key, value in tuned.items():
        assert getattr(DEFAULTS, key) == train_args[key] == table_args[key] == value, key
    demo = (RECIPE.parent / "run_demo.sh").read_text().splitlines()
    code = "\n".join(ln for ln in demo if not ln.lstrip().startswith("#"))
    assert not re.search(r"--kd-(scale|sampling-scale|temperature|prune-range)\b", code)

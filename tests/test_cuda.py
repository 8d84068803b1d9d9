"""The CUDA code paths, each checked against the same computation on the CPU.

CI has no GPU, so every test here is skipped there; they run wherever
``torch.cuda.is_available()`` (see RESULTS.md, "The GPU code paths"). Each
test builds one model on the CPU, copies it to the GPU, feeds both the same
input and compares what comes out: the transducer losses and every gradient
(Conformer and Zipformer), each KD method and sampler, greedy and modified
beam search, and ScaledAdam's steps. TF32 is switched off so that float32
means float32 on both sides. The last test runs the recipe itself on the GPU
(teacher in bf16, a KD student in fp16 with the teacher sampler) and decodes
the GPU-trained checkpoints on the CPU, as a user who trains on a GPU server
and decodes elsewhere would.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda", 0)
CPU = torch.device("cpu")
V = 12


@pytest.fixture(autouse=True)
def _no_tf32():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


CONFORMER = dict(
    encoder_dim=32, num_encoder_layers=2, num_heads=2, feedforward_dim=64, cnn_module_kernel=5,
    decoder_dim=24, joiner_dim=24, vocab_size=V, feature_dim=80, dropout=0.0, use_ctc=True,
)  # fmt: skip
ZIPFORMER = dict(
    encoder_type="zipformer", downsampling_factor="1,2", num_encoder_layers="1,1",
    encoder_dim="32,48", encoder_unmasked_dim="16,32", feedforward_dim="48,64", num_heads="2,2",
    cnn_module_kernel="5,3", query_head_dim="8", value_head_dim="4", pos_head_dim="2", pos_dim=8,
    decoder_dim=24, joiner_dim=24, vocab_size=V, feature_dim=80, use_ctc=True,
)  # fmt: skip


def _model(config: Dict[str, Any], seed: int) -> torch.nn.Module:
    from icefall_spkd.models.presets import build_model

    torch.manual_seed(seed)
    model = build_model(dict(config))
    with torch.no_grad():  # livelier output distributions than the initialisation's
        model.joiner.output_linear.weight.mul_(3.0)
    return model.eval()


def _pair(config: Dict[str, Any], seed: int) -> Tuple[torch.nn.Module, torch.nn.Module]:
    cpu = _model(config, seed)
    return cpu, copy.deepcopy(cpu).to(CUDA)


def _batch(seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor, List[List[int]]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 120, 80, generator=g)
    x_lens = torch.tensor([120, 96, 71])
    y = [[3, 5, 2, 7, 1], [4], [6, 6, 9, 10, 11, 2, 8]]
    return x, x_lens, y


def _close(a: torch.Tensor, b: torch.Tensor, what: str, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    b = b.detach().to(CPU)
    assert a.shape == b.shape, what
    err = (a.detach() - b).abs().max().item() if a.numel() else 0.0
    assert torch.allclose(a.detach(), b, rtol=rtol, atol=atol), f"{what}: max |cpu - cuda| = {err:.3g}"


def _grads_close(cpu: torch.nn.Module, cuda: torch.nn.Module, rtol: float = 1e-3) -> int:
    """Every gradient equal up to ``rtol`` of that tensor's largest entry; returns how many."""
    n = 0
    for (name, p), q in zip(cpu.named_parameters(), cuda.parameters()):
        if p.grad is None:
            assert q.grad is None or not q.grad.any(), name
            continue
        scale = p.grad.abs().max().item() + 1e-12
        _close(p.grad, q.grad, f"grad of {name}", rtol=0.0, atol=rtol * scale)
        n += 1
    return n


@pytest.mark.parametrize("config", [CONFORMER, ZIPFORMER], ids=["conformer", "zipformer"])
def test_transducer_losses_and_gradients_match_cpu(config):
    """Simple, pruned (k2 / fast_rnnt on CUDA) and CTC losses and all gradients."""
    x, x_lens, y = _batch()
    outs = []
    for model, dev in zip(_pair(config, seed=0), (CPU, CUDA)):
        out = model(x.to(dev), x_lens.to(dev), y, prune_range=3, return_outputs=True)
        ctc = model.ctc_loss(out.encoder_out, out.encoder_out_lens, *_padded(y, dev))
        (out.simple_loss * 0.5 + out.pruned_loss + 0.3 * ctc).backward()
        outs.append((model, out, ctc))
    (m_cpu, o_cpu, ctc_cpu), (m_gpu, o_gpu, ctc_gpu) = outs
    assert torch.equal(o_cpu.ranges, o_gpu.ranges.cpu())
    for name in ("simple_loss", "pruned_loss"):
        _close(getattr(o_cpu, name), getattr(o_gpu, name), name)
    _close(ctc_cpu, ctc_gpu, "ctc_loss")
    assert _grads_close(m_cpu, m_gpu) > 10


def _padded(y: List[List[int]], device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    from icefall_spkd.utils import pad_token_ids

    return pad_token_ids(y, pad_id=0, device=device)


def _kd_params(**kw: Any) -> Dict[str, Any]:
    p = dict(
        kd_loss="pkd", kd_sampler="none", kd_num_samples=2, kd_sample_temperature=1.0,
        kd_temperature=1.0, kd_prune_range=3, kd_ranges="teacher", kd_node_weights="uniform",
        kd_num_paths=8, prune_range=3, am_scale=0.0, lm_scale=0.0,
    )  # fmt: skip
    p.update(kw)
    return p


KD_CASES = [
    dict(),
    dict(kd_sampler="teacher"),
    dict(kd_sampler="teacher", kd_node_weights="posterior", kd_temperature=2.0),
    dict(kd_sampler="batch", kd_node_weights="sampled"),
    dict(kd_sampler="nbest", kd_node_weights="viterbi", kd_ranges="student"),
    dict(kd_loss="full", kd_sampler="teacher"),
    dict(kd_loss="collapsed", kd_sampler="batch"),
]


@pytest.mark.parametrize("kw", KD_CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "pkd")
def test_kd_losses_and_gradients_match_cpu(kw):
    """compute_kd_losses on CUDA: same samples (a CPU generator drives both), losses and gradients."""
    from icefall_spkd.kd import compute_kd_losses

    params = _kd_params(**kw)
    x, x_lens, y = _batch(1)
    teachers = _pair(CONFORMER, seed=1)
    students = _pair(dict(CONFORMER, encoder_dim=16, num_encoder_layers=1), seed=2)
    results = []
    for teacher, student, dev in zip(teachers, students, (CPU, CUDA)):
        y_padded, y_lens = _padded(y, dev)
        with torch.no_grad():
            t_out = teacher(x.to(dev), x_lens.to(dev), y, prune_range=3, return_outputs=True)
        s_out = student(x.to(dev), x_lens.to(dev), y, prune_range=3, return_outputs=True)
        out = compute_kd_losses(
            teacher, student, t_out, s_out, y_padded, y_lens, params, torch.Generator().manual_seed(5)
        )
        (out["kd"] + out["kd_samp"]).backward()
        results.append(out)
    cpu, gpu = results
    assert cpu["kd"].item() > 1e-3
    for key in ("kd", "kd_samp", "kd_frames"):
        _close(cpu[key], gpu[key], key)
    if params["kd_sampler"] != "none":
        assert cpu["kd_samp"].item() > 1e-3
        _close(cpu["kd_samp_tokens"], gpu["kd_samp_tokens"], "kd_samp_tokens")
    assert all(p.grad is None for t in teachers for p in t.parameters())
    assert _grads_close(*students) > 10


@pytest.mark.parametrize("config", [CONFORMER, ZIPFORMER], ids=["conformer", "zipformer"])
def test_searches_match_cpu(config):
    from icefall_spkd.search import greedy_search_batch, modified_beam_search

    x, x_lens, _ = _batch(2)
    hyps = []
    for model, dev in zip(_pair(config, seed=3), (CPU, CUDA)):
        with torch.no_grad():
            enc, enc_lens = model.forward_encoder(x.to(dev), x_lens.to(dev))
            hyps.append(
                (
                    greedy_search_batch(model, enc, enc_lens),
                    modified_beam_search(model, enc, enc_lens, beam=4),
                )
            )
    assert hyps[0] == hyps[1]
    assert sum(len(h) for h in hyps[0][1]) > 0  # the search emitted tokens


def test_scaled_adam_steps_match_cpu():
    """ScaledAdam + Eden on CUDA: the same parameters after steps with the same gradients.

    The gradients are computed once, on the CPU model, and copied to the GPU
    model, so only the optimiser's arithmetic is compared (gradients computed on
    each device differ by rounding, which Adam's normalisation magnifies for
    entries with tiny gradients).
    """
    from icefall_spkd.optim import Eden
    from icefall_spkd.scaled_adam import ScaledAdam

    models = _pair(ZIPFORMER, seed=4)
    start = copy.deepcopy(models[0])
    opts = [ScaledAdam(m.named_parameters(), lr=0.045, clipping_scale=2.0) for m in models]
    scheds = [Eden(o, 10, 2, warmup_batches=2) for o in opts]
    x, x_lens, y = _batch(3)
    for step in range(8):  # size_update_period is 4: the scale updates run twice
        simple, pruned = models[0](x, x_lens, y, prune_range=3)
        (0.5 * simple + pruned).backward()
        for p, q in zip(models[0].parameters(), models[1].parameters()):
            q.grad = None if p.grad is None else p.grad.to(CUDA)
        for opt, sched in zip(opts, scheds):
            opt.step()
            sched.step_batch(step + 1)
            opt.zero_grad()
    n = 0
    for (name, p), q in zip(models[0].named_parameters(), models[1].parameters()):
        _close(p, q, name, rtol=1e-5, atol=1e-6)
        n += 1
    assert n > 10
    moved = [not torch.equal(a, b) for a, b in zip(start.parameters(), models[0].parameters())]
    assert sum(moved) > 10


def test_bf16_autocast_losses_near_float32():
    """Under bf16 autocast the losses stay float32 and near the float32 ones."""
    _, model = _pair(CONFORMER, seed=5)
    x, x_lens, y = _batch(4)
    x, x_lens = x.to(CUDA), x_lens.to(CUDA)
    with torch.no_grad():
        ref = model(x, x_lens, y, prune_range=3)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low = model(x, x_lens, y, prune_range=3)
    for r, lo in zip(ref, low):
        assert lo.dtype == torch.float32 and torch.isfinite(lo)
        assert abs(lo.item() - r.item()) < 0.03 * abs(r.item()), (lo.item(), r.item())


# --------------------------------------------------------------------------- #
# the recipe on the GPU, decoded on the CPU
# --------------------------------------------------------------------------- #
@pytest.mark.slow
def test_recipe_trains_on_cuda_and_decodes_on_cpu(corpus: Path, tmp_path: Path, monkeypatch) -> None:
    from test_train import _common_args, _data_args, _run, _train_args
    from test_train_kd import TEACHER_ARGS

    teacher = tmp_path / "teacher"
    _run("train.py", _train_args(corpus, teacher, *TEACHER_ARGS, "--use-bf16", "true"), cwd=corpus)
    log = "".join(f.read_text() for f in (teacher / "log").glob("log-train*"))
    assert "Device: cuda:0" in log and "bf16" in log.lower()

    student = tmp_path / "student"
    kd = ["--teacher-checkpoint", str(teacher / "epoch-2.pt"), "--kd-loss", "pkd",
          "--kd-sampler", "teacher", "--kd-num-samples", "2", "--use-fp16", "true"]  # fmt: skip
    _run("train.py", _train_args(corpus, student, *kd), cwd=corpus)
    log = "".join(f.read_text() for f in (student / "log").glob("log-train*"))
    assert "Device: cuda:0" in log and "kd_samp" in log

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # decode.py now sees no GPU
    for exp in (teacher, student):
        args = [*_common_args(corpus, exp), *_data_args(), "--epoch", "2", "--avg", "1"]
        if exp == teacher:
            args += TEACHER_ARGS
        args += ["--decoding-method", "modified_beam_search", "--test-sets", "test-clean"]
        _run("decode.py", args, cwd=corpus)
        recogs = list((exp / "modified_beam_search").glob("recogs-test-clean-*.txt"))
        assert len(recogs) == 1 and "ref=" in recogs[0].read_text()
        dlog = "".join(f.read_text() for f in (exp / "modified_beam_search").glob("log-decode*"))
        assert "Device: cpu" in dlog

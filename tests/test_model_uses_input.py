"""The transducer must learn from its input, not only from its label history.

The overfit test in test_transducer_loss.py can be passed by the stateless
decoder alone (it can memorise a few label sequences). Here every label
sequence is fresh and random, and the features spell the labels out: token
``k`` lights feature ``k`` for 8 frames, with silent gaps between tokens. A
model that ignores its input cannot beat the label prior (about
``log(V - 3)`` nats per token); a model that reads it drives the loss towards
zero, and the loss on features shuffled across the batch must then be much
higher than on the true features.
"""

from __future__ import annotations

import torch

from icefall_spkd.models.presets import build_model

V = 20  # ids 0..2 are special; tokens are 3..19


def _batch(gen: torch.Generator, batch_size: int = 16):
    ys, feats = [], []
    for _ in range(batch_size):
        u = int(torch.randint(3, 9, (), generator=gen))
        y = torch.randint(3, V, (u,), generator=gen).tolist()
        blocks = []
        for tok in y:
            block = torch.zeros(12, 80)
            block[4:, tok] = 5.0  # 4 silent frames, then 8 frames of token `tok`
            blocks.append(block)
        blocks.append(torch.zeros(12, 80))
        f = torch.cat(blocks)
        feats.append(f + 0.3 * torch.randn(f.shape, generator=gen))
        ys.append(y)
    lens = torch.tensor([len(f) for f in feats])
    x = torch.zeros(batch_size, int(lens.max()), 80)
    for i, f in enumerate(feats):
        x[i, : len(f)] = f
    return x, lens, ys


def test_transducer_learns_to_read_its_input():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = build_model(
        {
            "model_preset": "tiny",
            "vocab_size": V,
            "encoder_dim": 64,
            "num_encoder_layers": 2,
            "feedforward_dim": 128,
            "decoder_dim": 64,
            "joiner_dim": 64,
            "dropout": 0.0,
        }
    )
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(400):
        x, lens, ys = _batch(gen)
        simple, pruned = model(x, lens, ys, prune_range=5, lm_scale=0.25)
        frames = ((lens - 3) // 4).sum()
        opt.zero_grad()
        ((0.5 * simple + pruned) / frames).backward()
        opt.step()

    model.eval()
    x, lens, ys = _batch(gen, batch_size=32)
    tokens = sum(len(y) for y in ys)
    with torch.no_grad():
        _, true_loss = model(x, lens, ys)
        _, shuffled_loss = model(x[torch.roll(torch.arange(32), 1)], lens, ys)
    # The label prior alone costs about log(17) = 2.8 nats per token; reading
    # the input must bring the per-token loss far below that, and shuffling
    # the features across utterances must cost far more than it did.
    assert true_loss / tokens < 0.5, (true_loss / tokens).item()
    assert shuffled_loss > 4 * true_loss, (shuffled_loss.item(), true_loss.item())

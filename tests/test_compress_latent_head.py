"""Tests of compress.py (compression, chunk labels) and latent_head.py (the head, its scale, losses and log-densities),
each against a slow reference or torch.distributions.

Run: .venv/bin/python -m pytest tests
"""
import math

import pytest
import torch
import torch.nn.functional as F

import latent_head as lh
from compress import compress, sample_chunk_labels
from latent_head import LatentHead

PAD_VALUE = 999.0  # what the embeddings hold at padding positions: must never reach a compressed embedding
# --- compress() ------------------------------------------------------------------------------------------------
def ragged(lengths=(7, 3, 0), L=7, C=4):
    """Integer-valued embeddings (row i, position j, dim d -> 100 i + 10 j + d), right-padded with PAD_VALUE."""
    B = len(lengths)
    emb = torch.full((B, L, C), PAD_VALUE)
    ids = torch.full((B, L), 77)
    mask = torch.zeros(B, L, dtype=torch.bool)
    for i, n in enumerate(lengths):
        for j in range(n):
            emb[i, j] = torch.tensor([100.0 * i + 10 * j + d for d in range(C)])
            ids[i, j] = 10 * i + j
            mask[i, j] = True
    return emb, ids, mask


def slow_compress(emb, lengths, c, pool="sqrt"):
    """Reference: per row, per chunk of c real tokens (the last one partial), the sum over its rows / sqrt(n) or / n.
    Returns per row a list of (vector as a list of floats, token ids of the chunk)."""
    out = []
    for i, n_real in enumerate(lengths):
        chunks = []
        for start in range(0, n_real, c):
            js = list(range(start, min(start + c, n_real)))
            n = len(js)
            div = math.sqrt(n) if pool == "sqrt" else n
            vec = [sum(float(emb[i, j, d]) for j in js) / div for d in range(emb.size(2))]
            chunks.append((vec, js))
        out.append(chunks)
    return out


@pytest.mark.parametrize("L", [7, 10])  # the chunks of the longest chain overrun L (7 -> 9) or fall short (10 -> 9)
@pytest.mark.parametrize("pool", ["sqrt", "mean"])
def test_compress_ragged_batch_matches_slow_reference(L, pool):
    lengths, c, C = (7, 3, 0), 3, 4
    emb, ids, mask = ragged(lengths, L, C)
    z, zmask, chunk_ids = compress(emb, ids, mask, c, pool)
    assert z.shape == (3, 3, C) and zmask.shape == (3, 3) and chunk_ids.shape == (3, 3, c)
    assert zmask.tolist() == [[True, True, True], [True, False, False], [False, False, False]]
    ref = slow_compress(emb, lengths, c, pool)
    for i in range(3):
        for k in range(3):
            if k < len(ref[i]):
                vec, js = ref[i][k]
                torch.testing.assert_close(z[i, k], torch.tensor(vec), rtol=1e-6, atol=1e-4)
                assert chunk_ids[i, k].tolist() == [10 * i + j for j in js] + [-1] * (c - len(js))
            else:
                assert (z[i, k] == 0).all() and chunk_ids[i, k].tolist() == [-1] * c
    # hand-worked: row 0, the partial last chunk holds token 6 alone: 100*0 + 10*6 + d, divided by sqrt(1) = 1
    assert z[0, 2].tolist() == [60.0, 61.0, 62.0, 63.0]
    # row 0 chunk 0: rows 0, 10, 20 (+d) sum to 30 + 3d; / sqrt(3) or / 3
    div = math.sqrt(3) if pool == "sqrt" else 3
    torch.testing.assert_close(z[0, 0], torch.tensor([(30 + 3 * d) / div for d in range(C)]))
    # no zmask-True chunk is all padding, and the pad value never leaks in
    assert ((chunk_ids >= 0).any(-1) == zmask).all()
    assert z.abs().max() < PAD_VALUE


def test_compress_c1_is_identity_and_large_c_gives_one_chunk():
    lengths = (7, 3, 0)
    emb, ids, mask = ragged(lengths)
    z, zmask, chunk_ids = compress(emb, ids, mask, 1)
    assert z.shape == emb.shape
    assert zmask.tolist() == mask.tolist()
    assert torch.equal(z[mask], emb[mask])                 # c = 1: the embeddings themselves
    assert (z[~mask] == 0).all()
    assert torch.equal(chunk_ids[..., 0], ids.masked_fill(~mask, -1))
    z, zmask, chunk_ids = compress(emb, ids, mask, 10)     # c beyond the longest chain: one chunk per non-empty row
    assert z.shape == (3, 1, 4) and zmask.tolist() == [[True], [True], [False]]
    torch.testing.assert_close(z[0, 0], emb[0, :7].sum(0) / math.sqrt(7))
    torch.testing.assert_close(z[1, 0], emb[1, :3].sum(0) / math.sqrt(3))
    assert (z[2] == 0).all()
    assert chunk_ids[1, 0].tolist() == [10, 11, 12] + [-1] * 7


def test_compress_rejects_bad_arguments():
    emb, ids, mask = ragged()
    with pytest.raises(ValueError, match="c must be >= 1"):
        compress(emb, ids, mask, 0)
    with pytest.raises(ValueError, match="pool"):
        compress(emb, ids, mask, 2, pool="max")
    left = torch.zeros_like(mask)
    left[0, 2:] = True  # left padding: real tokens follow pads
    with pytest.raises(ValueError, match="right-padded"):
        compress(emb, ids, left, 2)


# --- sample_chunk_labels() -------------------------------------------------------------------------------------
def test_sample_chunk_labels_uniform_over_real_tokens():
    chunks = torch.tensor([[[5, 6, 7], [8, 9, -1], [-1, -1, -1]],
                           [[10, -1, -1], [-1, -1, -1], [-1, -1, -1]]])
    N = 4000
    many = chunks.repeat(N, 1, 1)  # N independent draws of both rows, in one call
    labels = sample_chunk_labels(many, torch.Generator().manual_seed(0)).view(N, 2, 3)
    assert labels.shape == (N, 2, 3)
    assert set(labels[:, 0, 0].tolist()) <= {5, 6, 7} and set(labels[:, 0, 1].tolist()) <= {8, 9}
    assert (labels[:, 0, 2] == -1).all() and (labels[:, 1, 0] == 10).all() and (labels[:, 1, 1:] == -1).all()
    for k, toks in ((0, (5, 6, 7)), (1, (8, 9))):
        for t in toks:
            freq = (labels[:, 0, k] == t).float().mean().item()
            assert abs(freq - 1 / len(toks)) < 0.05, (k, t, freq)
    # also over repeated calls sharing one generator (the way training redraws every step)
    g = torch.Generator().manual_seed(1)
    draws = [sample_chunk_labels(chunks, g)[0, 0].item() for _ in range(600)]
    assert set(draws) == {5, 6, 7} and all(abs(draws.count(t) / 600 - 1 / 3) < 0.08 for t in (5, 6, 7))
    # the same seed gives the same labels; another seed other labels
    a = sample_chunk_labels(many, torch.Generator().manual_seed(3))
    assert torch.equal(a, sample_chunk_labels(many, torch.Generator().manual_seed(3)))
    assert not torch.equal(a, sample_chunk_labels(many, torch.Generator().manual_seed(4)))


# --- latent_head.py --------------------------------------------------------------------------------------------
def gauss_inputs(shape=(6, 5), seed=0):
    """mu, log_sigma, target: (N, C) rows, as the losses take them."""
    g = torch.Generator().manual_seed(seed)
    mu, target = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    log_sigma = 0.5 * torch.randn(shape, generator=g)
    return mu, log_sigma, target


def test_gaussian_log_prob_and_entropy_match_torch_normal():
    mu, log_sigma, z = gauss_inputs((2, 3, 5))
    normal = torch.distributions.Normal(mu, log_sigma.exp())
    torch.testing.assert_close(lh.gaussian_log_prob(z, mu, log_sigma), normal.log_prob(z).mean(-1))
    torch.testing.assert_close(lh.gaussian_entropy(log_sigma), normal.entropy().mean(-1))
    assert lh.gaussian_log_prob(z, mu, log_sigma).shape == (2, 3)


@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_soft_mse_loss_by_hand(alpha):
    mu, log_sigma, target = gauss_inputs()
    eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(7))
    loss = lh.soft_mse_loss(mu, log_sigma, target, eps, alpha)
    N, C = mu.shape
    per = []
    for i in range(N):
        sq = sum((float(mu[i, d]) + math.exp(float(log_sigma[i, d])) * float(eps[i, d]) - float(target[i, d])) ** 2
                 for d in range(C)) / C
        ent = sum(0.5 * math.log(2 * math.pi * math.e * math.exp(2 * float(log_sigma[i, d]))) for d in range(C)) / C
        per.append(sq - alpha * ent)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(sum(per) / N, rel=1e-5)


def test_soft_mse_expectation_is_mse_plus_variance():
    mu, log_sigma = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([-0.5, 0.0, -1.0])
    target = torch.tensor([0.0, 0.0, 1.0])
    N = 20000
    eps = torch.randn(N, 3, generator=torch.Generator().manual_seed(0))
    loss = lh.soft_mse_loss(mu.expand(N, 3), log_sigma.expand(N, 3), target.expand(N, 3), eps)
    # per dimension (mu - t)^2 + sigma^2: (0.25 + e^-1) + (1 + 1) + (1 + e^-2), then the mean over the 3 dimensions
    expected = (0.25 + math.exp(-1) + 2 + 1 + math.exp(-2)) / 3
    assert loss.item() == pytest.approx(expected, rel=0.03)


def test_nll_and_mse_against_torch():
    mu, log_sigma, target = gauss_inputs()
    nll = -torch.distributions.Normal(mu, log_sigma.exp()).log_prob(target).mean()
    assert lh.nll_loss(mu, log_sigma, target).item() == pytest.approx(nll.item(), rel=1e-5)
    assert lh.mse_loss(mu, target).item() == pytest.approx(F.mse_loss(mu, target).item(), rel=1e-6)


def test_latent_loss_dispatch_normalises_and_detaches_target():
    torch.manual_seed(0)
    head = LatentHead(8, hidden=12)
    head.scale.fill_(2.0)
    h = torch.randn(5, 8)
    target = torch.randn(5, 8, requires_grad=True)
    t = target.detach() / 2.0  # what the head learns: the target in its normalised space
    mu, log_sigma = head(h)
    loss, _ = lh.latent_loss(head, h, target, "nll")
    nll = -torch.distributions.Normal(mu, log_sigma.exp()).log_prob(t).mean()
    assert loss.item() == pytest.approx(nll.item(), rel=1e-5)
    loss.backward()
    assert target.grad is None  # no gradient into the embedding table through the target
    # soft-MSE with zero noise is the MSE of the mean; alpha subtracts the mean entropy
    zero = torch.zeros(5, 8)
    loss, _ = lh.latent_loss(head, h, target, "soft_mse", 0.0, zero)
    assert loss.item() == pytest.approx(F.mse_loss(mu, t).item(), rel=1e-5)
    with_alpha, _ = lh.latent_loss(head, h, target, "soft_mse", 0.1, zero)
    entropy = torch.distributions.Normal(mu, log_sigma.exp()).entropy().mean()
    assert with_alpha.item() == pytest.approx(loss.item() - 0.1 * entropy.item(), rel=1e-5)
    det = LatentHead(8, deterministic=True)
    det.scale.fill_(2.0)
    mu, log_sigma = det(h)
    assert (log_sigma == lh.LOG_SIGMA_MIN).all()
    for kind in ("soft_mse", "nll"):  # a deterministic head always uses plain MSE, and needs no noise
        loss, _ = lh.latent_loss(det, h, target, kind, 0.5)
        assert loss.item() == pytest.approx(F.mse_loss(mu, t).item(), rel=1e-6)


def test_latent_head_sample_temperature_and_deterministic():
    """The latent fed back, in embedding space: (mu + sigma * temperature * eps) * scale; mu * scale at temperature 0
    and for a deterministic head."""
    torch.manual_seed(0)
    head = LatentHead(8)
    head.scale.fill_(2.5)
    h = torch.randn(3, 8)
    mu, _ = head(h)
    torch.testing.assert_close(head.sample(h, 0.0, torch.Generator().manual_seed(1)), mu * 2.5)
    # mu = 0.3 and sigma = 0.2 whatever h: at temperature 0.5 the latents fed back have mean 0.3 x 2.5 = 0.75 and
    # standard deviation 0.2 x 0.5 x 2.5 = 0.25 (40,000 draws: the estimates' errors are about 0.001)
    with torch.no_grad():
        head.mu.weight.zero_()
        head.mu.bias.fill_(0.3)
        head.log_sigma.weight.zero_()
        head.log_sigma.bias.fill_(math.log(0.2))
    z = head.sample(torch.randn(5000, 8), 0.5, torch.Generator().manual_seed(1))
    assert abs(z.mean().item() - 0.75) < 0.01 and abs(z.std().item() - 0.25) < 0.01
    det = LatentHead(8, deterministic=True)
    det.scale.fill_(2.5)
    torch.testing.assert_close(det.sample(h, 1.0, torch.Generator().manual_seed(1)), det(h)[0] * 2.5)


def test_update_scale_and_normalise():
    head = LatentHead(4, momentum=0.1)
    assert head.scale.item() == 0.0
    t1 = torch.tensor([[[1.0, 2.0, 3.0, 4.0], [100.0, 100.0, 100.0, 100.0]]])
    m1 = torch.tensor([[True, False]])
    head.update_scale(t1, torch.zeros(1, 2, dtype=torch.bool))  # nothing to measure: unchanged
    assert head.scale.item() == 0.0
    head.update_scale(t1, m1)
    s1 = math.sqrt((1 + 4 + 9 + 16) / 4)
    assert head.scale.item() == pytest.approx(s1)
    t2 = torch.full((1, 2, 4), 3.0)
    head.update_scale(t2, torch.tensor([[True, True]]))
    assert head.scale.item() == pytest.approx(0.9 * s1 + 0.1 * 3.0)
    head.update_scale(t2, torch.zeros(1, 2, dtype=torch.bool))
    assert head.scale.item() == pytest.approx(0.9 * s1 + 0.1 * 3.0)
    e = torch.tensor([1.0, -2.0, 6.0])
    torch.testing.assert_close(head.normalise(e), e / (0.9 * s1 + 0.3))
    assert "scale" in head.state_dict()  # it travels with checkpoints

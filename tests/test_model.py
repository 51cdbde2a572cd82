"""Tests of model.py: input forms, the three return values, the KV cache, padding, the loss and the block_size check.

Run: .venv/bin/python -m pytest tests/test_model.py
"""
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_gpt

from model import GPT, GPTConfig, KVCache

V, C, BLOCK = 40, 32, 32
TOL = dict(atol=1e-5, rtol=1e-5)


def tiny(pos_emb="rope", seed=0, block_size=BLOCK):
    """A 2-layer GPT with large random weights everywhere (LayerNorms and biases too), so attention is sharp and
    logits differ a lot between positions: a wrong mask or cache would change them by far more than TOL."""
    return tiny_gpt(V, block_size, n_layer=2, n_embd=C, pos_emb=pos_emb, seed=seed, init="sharp_all")


def ids(*shape, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, shape, generator=g)


# --- input forms -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pos_emb", ["rope", "learned"])
def test_forward_shapes_and_idx_embeds_concatenation(pos_emb):
    m = tiny(pos_emb)
    a, b = ids(2, 5, seed=1), ids(2, 3, seed=2)
    with torch.no_grad():
        la = m(idx=a)[0]
        assert la.shape == (2, 5, V)
        e = torch.randn(2, 4, C, generator=torch.Generator().manual_seed(3))
        le = m(embeds=e)[0]
        assert le.shape == (2, 4, V)
        lae = m(idx=a, embeds=e)[0]
        assert lae.shape == (2, 9, V)
        # causal: the token positions do not see the embeddings that follow them
        torch.testing.assert_close(lae[:, :5], la, **TOL)
        # embeds alone are the same as the token ids they embed
        torch.testing.assert_close(m(embeds=m.wte(a))[0], la, **TOL)
        # ids then embeddings of b == the ids of a and b concatenated
        mixed = m(idx=a, embeds=m.wte(b))[0]
        full = m(idx=torch.cat([a, b], dim=1))[0]
        assert mixed.shape == full.shape == (2, 8, V)
        torch.testing.assert_close(mixed, full, **TOL)
        # control: embeddings that are not those of b give different logits at b's positions
        other = m.wte(b) + 0.5 * torch.randn(2, 3, C, generator=torch.Generator().manual_seed(4))
        assert (m(idx=a, embeds=other)[0][:, 5:] - full[:, 5:]).abs().max() > 1e-2
    with pytest.raises(ValueError):
        m()


def test_forward_always_returns_logits_loss_and_hidden():
    """(logits, loss, h) whatever the inputs: loss None without targets; h is ln_f of the last block's output and the
    tied head's input."""
    m = tiny()
    x = ids(2, 6)
    seen = {}
    h1 = m.blocks[-1].register_forward_hook(lambda mod, inp, out: seen.__setitem__("resid", out.detach()))
    h2 = m.ln_f.register_forward_hook(lambda mod, inp, out: seen.__setitem__("ln_in", inp[0].detach()))
    try:
        with torch.no_grad():
            out = m(x)
    finally:
        h1.remove()
        h2.remove()
    assert isinstance(out, tuple) and len(out) == 3
    logits, loss, hidden = out
    assert logits.shape == (2, 6, V) and loss is None and hidden.shape == (2, 6, C)
    assert m.lm_head.weight is m.wte.weight  # tied
    torch.testing.assert_close(logits, hidden @ m.wte.weight.T, **TOL)
    # ln_f's input is the last block's output, and hidden is LayerNorm of it (computed here independently)
    torch.testing.assert_close(seen["ln_in"], seen["resid"], atol=0, rtol=0)
    r = seen["resid"]
    mu = r.mean(-1, keepdim=True)
    var = ((r - mu) ** 2).mean(-1, keepdim=True)
    ref = (r - mu) / torch.sqrt(var + m.ln_f.eps) * m.ln_f.weight + m.ln_f.bias
    torch.testing.assert_close(hidden, ref, **TOL)
    # with targets, embeddings, a mask and a cache as well: still three, in that order
    with torch.no_grad():
        for kw in (dict(idx=x, targets=x), dict(embeds=m.wte(x)), dict(idx=x, mask=torch.ones(2, 6, dtype=torch.bool)),
                   dict(idx=x, cache=KVCache(m.cfg.n_layer))):
            out = m(**kw)
            assert isinstance(out, tuple) and len(out) == 3 and out[2].shape == (2, 6, C)
            assert (out[1] is None) == ("targets" not in kw)
            torch.testing.assert_close(out[0], logits, **TOL)
            torch.testing.assert_close(out[2], hidden, **TOL)
    assert m(x, targets=x)[1].dim() == 0


# --- KV cache --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pos_emb", ["rope", "learned"])
def test_kv_cache_one_position_at_a_time_equals_full_forward(pos_emb):
    m = tiny(pos_emb)
    x = ids(2, 10)
    with torch.no_grad():
        full = m(x)[0]
        cache = KVCache(m.cfg.n_layer)
        steps = []
        for t in range(x.size(1)):
            steps.append(m(x[:, t:t + 1], cache=cache)[0])
            assert len(cache) == t + 1
            assert cache.k[0].shape == (2, 2, t + 1, C // 2)
        torch.testing.assert_close(torch.cat(steps, dim=1), full, **TOL)


@pytest.mark.parametrize("pos_emb", ["rope", "learned"])
def test_kv_cache_prompt_chunk_then_single_tokens(pos_emb):
    m = tiny(pos_emb)
    x = ids(3, 11)
    with torch.no_grad():
        full = m(x)[0]
        cache = KVCache(m.cfg.n_layer)
        parts = [m(x[:, :6], cache=cache)[0]]
        for t in range(6, 9):
            parts.append(m(x[:, t:t + 1], cache=cache)[0])
        parts.append(m(x[:, 9:], cache=cache)[0])  # a chunk again, after single tokens
        torch.testing.assert_close(torch.cat(parts, dim=1), full, **TOL)
        # control: without the cache, the last token alone is not what it is in context
        assert (m(x[:, 10:])[0] - full[:, 10:]).abs().max() > 1e-2


def test_kv_cache_with_embeds_after_tokens():
    """Latent decoding: a token prompt through the cache, then one input embedding at a time."""
    m = tiny()
    a = ids(2, 4)
    e = torch.randn(2, 3, C, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        full = m(idx=a, embeds=e)[0]
        cache = KVCache(m.cfg.n_layer)
        parts = [m(idx=a, cache=cache)[0]] + [m(embeds=e[:, i:i + 1], cache=cache)[0] for i in range(3)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, **TOL)


def test_kv_cache_keep_drops_rows_without_changing_the_others():
    m = tiny()
    x = ids(3, 9)
    with torch.no_grad():
        full = m(x)[0]
        c_all, c_kept = KVCache(m.cfg.n_layer), KVCache(m.cfg.n_layer)
        m(x[:, :5], cache=c_all)
        m(x[:, :5], cache=c_kept)
        keep = torch.tensor([0, 2])
        c_kept.keep(keep)
        assert len(c_kept) == 5 and c_kept.mask.shape == (2, 5)
        assert all(k.size(0) == 2 for k in c_kept.k + c_kept.v)
        for t in range(5, 9):
            la = m(x[:, t:t + 1], cache=c_all)[0]
            lk = m(x[keep, t:t + 1], cache=c_kept)[0]
            torch.testing.assert_close(lk, la[keep], **TOL)
            torch.testing.assert_close(lk, full[keep, t:t + 1], **TOL)


PAD = 7


def test_kv_cache_keep_with_left_padded_rows():
    """Rows with different padding: after dropping the middle row, each kept row keeps its own padding mask."""
    m = tiny()
    seqs = [ids(2 + 3, seed=31), ids(6 + 3, seed=32), ids(4 + 3, seed=33)]  # prompts of 2, 6 and 4 tokens
    prompts = [seqs[0][:2], seqs[1][:6], seqs[2][:4]]
    idx = torch.stack([torch.cat([torch.full((6 - len(p),), PAD), p]) for p in prompts])
    mask = torch.stack([torch.arange(6) >= 6 - len(p) for p in prompts])
    pos = (mask.long().cumsum(1) - 1).clamp(min=0)
    keep = torch.tensor([0, 2])
    with torch.no_grad():
        cache = KVCache(m.cfg.n_layer)
        m(idx, pos=pos, mask=mask, cache=cache)
        cache.keep(keep)
        assert cache.mask.tolist() == [mask[0].tolist(), mask[2].tolist()]
        nxt = torch.tensor([2, 4])
        for j in range(3):
            tok = torch.stack([seqs[0][2 + j], seqs[2][4 + j]])[:, None]
            o = m(tok, pos=(nxt + j)[:, None], cache=cache)[0]
            torch.testing.assert_close(o[0, 0], m(seqs[0][None, :3 + j])[0][0, -1], **TOL)
            torch.testing.assert_close(o[1, 0], m(seqs[2][None, :5 + j])[0][0, -1], **TOL)


# --- padding ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("pos_emb", ["rope", "learned"])
def test_left_padding_matches_unpadded_rows(pos_emb):
    m = tiny(pos_emb)
    short, long_ = ids(5, seed=11), ids(8, seed=12)
    idx = torch.stack([torch.cat([torch.full((3,), PAD), short]), long_])
    mask = torch.tensor([[False] * 3 + [True] * 5, [True] * 8])
    pos = torch.tensor([[0, 0, 0, 0, 1, 2, 3, 4], list(range(8))])
    with torch.no_grad():
        out = m(idx, pos=pos, mask=mask)[0]
        assert out.shape == (2, 8, V)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out[0, 3:], m(short[None])[0][0], **TOL)
        torch.testing.assert_close(out[1], m(long_[None])[0][0], **TOL)
        # control: the same input with the pads marked real gives different logits at the real positions
        assert (m(idx, pos=pos)[0][0, 3:] - out[0, 3:]).abs().max() > 1e-2


@pytest.mark.parametrize("pos_emb", ["rope", "learned"])
def test_right_padding_matches_unpadded_rows(pos_emb):
    m = tiny(pos_emb)
    short, long_ = ids(5, seed=11), ids(8, seed=12)
    idx = torch.stack([torch.cat([short, torch.full((3,), PAD)]), long_])
    mask = torch.tensor([[True] * 5 + [False] * 3, [True] * 8])
    pos = torch.tensor([[0, 1, 2, 3, 4, 4, 4, 4], list(range(8))])
    with torch.no_grad():
        out = m(idx, pos=pos, mask=mask)[0]
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out[0, :5], m(short[None])[0][0], **TOL)
        torch.testing.assert_close(out[1], m(long_[None])[0][0], **TOL)


def test_logits_finite_for_an_all_padding_row():
    m = tiny()
    idx = ids(2, 6)
    mask = torch.tensor([[False] * 6, [False, False, True, True, True, True]])
    pos = (mask.long().cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        logits, loss, _ = m(idx, pos=pos, mask=mask, targets=idx)
        assert torch.isfinite(logits).all() and torch.isfinite(loss)
        # as model.py says, a padding query sees only itself: its logits are those of its token alone at its position
        for b, t in [(0, 0), (0, 5), (1, 0), (1, 1)]:
            alone = m(idx[b:b + 1, t:t + 1], pos=pos[b:b + 1, t:t + 1])[0]
            torch.testing.assert_close(logits[b, t], alone[0, 0], **TOL)


@pytest.mark.parametrize("pos_emb", ["rope", "learned"])
def test_kv_cache_continues_after_a_left_padded_prompt(pos_emb):
    m = tiny(pos_emb)
    seq0, seq1 = ids(4 + 4, seed=21), ids(7 + 4, seed=22)  # prompts of 4 and 7 tokens, then 4 more tokens each
    p0, p1 = seq0[:4], seq1[:7]
    idx = torch.stack([torch.cat([torch.full((3,), PAD), p0]), p1])
    mask = torch.tensor([[False] * 3 + [True] * 4, [True] * 7])
    pos = (mask.long().cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        ref0, ref1 = m(seq0[None])[0][0], m(seq1[None])[0][0]
        cache = KVCache(m.cfg.n_layer)
        out = m(idx, pos=pos, mask=mask, cache=cache)[0]
        torch.testing.assert_close(out[0, 3:], ref0[:4], **TOL)
        torch.testing.assert_close(out[1], ref1[:7], **TOL)
        nxt = torch.tensor([4, 7])
        for j in range(2):  # single tokens, explicit positions
            tok = torch.stack([seq0[4 + j], seq1[7 + j]])[:, None]
            o = m(tok, pos=(nxt + j)[:, None], cache=cache)[0]
            torch.testing.assert_close(o[0, 0], ref0[4 + j], **TOL)
            torch.testing.assert_close(o[1, 0], ref1[7 + j], **TOL)
        # then a chunk of two
        tok = torch.stack([seq0[6:8], seq1[9:11]])
        o = m(tok, pos=(nxt + 2)[:, None] + torch.arange(2), cache=cache)[0]
        torch.testing.assert_close(o[0], ref0[6:8], **TOL)
        torch.testing.assert_close(o[1], ref1[9:11], **TOL)
        assert len(cache) == 11 and cache.mask[0].tolist() == [False] * 3 + [True] * 8


# --- loss and limits -------------------------------------------------------------------------------------------
def test_loss_all_ignored_is_exactly_zero():
    m = tiny()
    x = ids(2, 5)
    logits, loss, _ = m(x, targets=torch.full((2, 5), -1))
    assert logits.shape == (2, 5, V)
    assert torch.isfinite(loss) and loss.item() == 0.0
    loss.backward()  # and it does not break training


def test_loss_is_cross_entropy_over_supervised_positions():
    m = tiny()
    x = ids(2, 6, seed=3)
    t = ids(2, 6, seed=4)
    t[0, :4] = -1
    t[1, 2] = -1
    with torch.no_grad():
        logits, loss, _ = m(x, targets=t)
    sel = t != -1
    assert sel.sum() == 7
    ref = F.cross_entropy(logits[sel], t[sel])
    # and by hand: mean of -log softmax at the target ids
    lp = torch.log_softmax(logits.double(), -1)
    by_hand = -torch.stack([lp[b, i, t[b, i]] for b, i in sel.nonzero().tolist()]).mean()
    torch.testing.assert_close(loss, ref, **TOL)
    assert abs(loss.item() - by_hand.item()) < 1e-5
    # not the mean over all positions (the -1 ones must not count, here as if they were token 0)
    assert abs(loss.item() - F.cross_entropy(logits.flatten(0, 1), t.clamp(min=0).flatten()).item()) > 1e-3


def test_position_beyond_block_size_raises():
    m = tiny(block_size=8)
    with torch.no_grad():
        assert m(ids(1, 8))[0].shape == (1, 8, V)  # exactly block_size is fine
        with pytest.raises(ValueError, match="block_size"):
            m(ids(1, 9))
        with pytest.raises(ValueError, match="block_size"):
            m(ids(1, 2), pos=torch.tensor([[0, 8]]))
        cache = KVCache(m.cfg.n_layer)
        m(ids(1, 8), cache=cache)
        with pytest.raises(ValueError, match="block_size"):
            m(ids(1, 1), cache=cache)
    with pytest.raises(ValueError, match="pos_emb"):
        GPT(GPTConfig(pos_emb="alibi"))

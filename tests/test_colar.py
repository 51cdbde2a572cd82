"""Tests of colar.py (the layout of every sequence, the CoLaR loss, feeding the model's own latents), latent decoding
and CoLaR checkpoints end to end (evaluate, exact resume).

Run: .venv/bin/python -m pytest tests/test_colar.py
"""
import math
from dataclasses import replace

import pytest
import torch
from conftest import tiny_colar_cfg, tiny_gpt

import colar
import evaluate
import train_sft
from checkpoint import load_checkpoint
from common import UserError
from compress import compress
from data.format import answers_match, read_split
from latent_head import LatentHead
from model import GPT
from sample import answer_questions, load_model

LT, GT = 256, 257  # the char tokenizer's `<<` and `>>`
ONE, PLUS, TWO, THREE, FOUR, EQ, SP = 49, 43, 50, 51, 52, 61, 32  # '1' '+' '2' '3' '4' '=' ' '


# --- colar.layout(), by hand --------------------------------------------------------------------------------------
def test_char_ids_used_below(tok):
    assert tok.encode("<<1+2=3>>") == [LT, ONE, PLUS, TWO, EQ, THREE, GT]
    assert tok.encode(" 4") == [SP, FOUR]


def test_layout_text_cot_row(tok):
    """"1+2" <|speed|> 1 <|bot|> <<1+2=3>> <|eot|> " 3" <|eos|>: 17 tokens, 16 positions (the last is only
    predicted); the targets are the next token from the speed digit on."""
    s, bot, eot, eos, pad = tok.speed, tok.bot, tok.eot, tok.eos, tok.pad
    ex = colar.encode(tok, [("1+2", ["1+2=3"], "3")], "cot")
    b = colar.layout(tok, ex, 1)
    chain = [LT, ONE, PLUS, TWO, EQ, THREE, GT]
    assert b.idx.tolist() == [[ONE, PLUS, TWO, s, ONE, bot] + chain + [eot, SP, THREE]]
    assert b.targets.tolist() == [[-1, -1, -1, -1, bot] + chain + [eot, SP, THREE, eos]]
    assert b.mask.tolist() == [[True] * 16]
    assert not b.latent_in.any() and not b.latent_out.any()
    assert b.eot_at.tolist() == [12]  # `>>` is followed by <|eot|>
    assert b.chain.tolist() == [chain] and b.chain_mask.tolist() == [[True] * 7]
    assert pad not in b.idx.tolist()[0]


def test_layout_nocot_row(tok):
    """"1+2" <|speed|> 0 <|bot|> <|eot|> " 3" <|eos|>: no chain; <|bot|> predicts <|eot|>."""
    s, bot, eot, eos, pad = tok.speed, tok.bot, tok.eot, tok.eos, tok.pad
    ex = colar.encode(tok, [("1+2", ["1+2=3"], "3")], "nocot")
    assert ex == [([ONE, PLUS, TWO], [], [SP, THREE])]
    b = colar.layout(tok, ex, 0)
    assert b.idx.tolist() == [[ONE, PLUS, TWO, s, 48, bot, eot, SP, THREE]]
    assert b.targets.tolist() == [[-1, -1, -1, -1, bot, eot, SP, THREE, eos]]
    assert b.mask.all() and not b.latent_in.any() and not b.latent_out.any()
    assert b.eot_at.tolist() == [5]
    assert b.chain.tolist() == [[pad]] and not b.chain_mask.any()  # one padding column, none real


def test_layout_latent_rows(tok):
    s, bot, eot, eos, pad = tok.speed, tok.bot, tok.eot, tok.eos, tok.pad
    q, chain, ans = tok.encode("1+2"), tok.encode("<<1+2=3>>"), tok.encode(" 3")
    b = colar.layout(tok, [(q, chain, ans)], 3, latent=True)
    # positions: 0-2 question, 3 <|speed|>, 4 "3", 5 <|bot|>, 6-8 latent slots (K = ceil(7 / 3) = 3), 9 <|eot|>,
    # 10-11 " 3"; <|bot|> and the first two slots predict the next latent (label -1: the loss fills it in)
    assert b.idx.tolist() == [[ONE, PLUS, TWO, s, THREE, bot, pad, pad, pad, eot, SP, THREE]]
    assert b.targets.tolist() == [[-1, -1, -1, -1, bot, -1, -1, -1, eot, SP, THREE, eos]]
    assert b.latent_in.tolist() == [[False] * 6 + [True] * 3 + [False] * 3]
    assert b.latent_out.tolist() == [[False] * 5 + [True] * 3 + [False] * 4]
    assert b.eot_at.tolist() == [8]
    assert b.mask.tolist() == [[True] * 12]
    assert b.chain.tolist() == [chain] and b.chain_mask.tolist() == [[True] * 7]
    # an empty chain: K = 0, <|bot|> predicts <|eot|>
    e = colar.layout(tok, [(q, [], ans)], 3, latent=True)
    assert e.idx.tolist() == [[ONE, PLUS, TWO, s, THREE, bot, eot, SP, THREE]]
    assert e.targets.tolist() == [[-1, -1, -1, -1, bot, eot, SP, THREE, eos]]
    assert not e.latent_in.any() and not e.latent_out.any() and e.eot_at.tolist() == [5]
    assert e.chain.shape == (1, 1) and not e.chain_mask.any()
    # two rows, right-padded to the longer one
    two = colar.layout(tok, [(q, [], ans), (q, chain, ans)], 3, latent=True)
    assert two.idx.shape == (2, 12) and two.chain.shape == (2, 7)
    assert two.idx[0].tolist() == e.idx[0].tolist() + [pad] * 3
    assert two.targets[0].tolist() == e.targets[0].tolist() + [-1] * 3
    assert two.mask.tolist() == [[True] * 9 + [False] * 3, [True] * 12]
    assert two.idx[1].tolist() == b.idx[0].tolist() and two.targets[1].tolist() == b.targets[0].tolist()
    assert two.eot_at.tolist() == [5, 8]
    assert two.chain_mask.tolist() == [[False] * 7, [True] * 7]
    # c = 2: K = ceil(7 / 2) = 4 slots
    c2 = colar.layout(tok, [(q, chain, ans)], 2, latent=True)
    assert c2.latent_in[0].nonzero().flatten().tolist() == [6, 7, 8, 9] and c2.eot_at.tolist() == [9]
    assert c2.idx[0, 4].item() == TWO
    # rows() takes the same rows of every field
    one = two.rows(torch.tensor([1]))
    assert one.idx.tolist() == b.idx.tolist() and one.latent_out.tolist() == b.latent_out.tolist()
    assert one.eot_at.tolist() == [8] and one.chain.tolist() == b.chain.tolist()


def test_layout_rl_replay_rows(tok):
    """RL's replay: a rollout's own number of latents, and closed=False leaves an unfinished answer without <|eos|>.
    Row 0: "1+2" <|speed|> 2 <|bot|> [2 latents] <|eot|> " 3"        (unfinished: 11 tokens, 10 positions)
    Row 1: "4" <|speed|> 2 <|bot|> <|eot|> " 12" <|eos|>             (no latent, closed: 9 tokens)"""
    s, bot, eot, eos, pad = tok.speed, tok.bot, tok.eot, tok.eos, tok.pad
    ex = [(tok.encode("1+2"), [], tok.encode(" 3")), (tok.encode("4"), [], tok.encode(" 12"))]
    b = colar.layout(tok, ex, 2, latent=True, n_latents=[2, 0], closed=[False, True])
    assert b.idx.tolist() == [[ONE, PLUS, TWO, s, TWO, bot, pad, pad, eot, SP],
                              [FOUR, s, TWO, bot, eot, SP, ONE, TWO, pad, pad]]
    assert b.targets.tolist() == [[-1, -1, -1, -1, bot, -1, -1, eot, SP, THREE],
                                  [-1, -1, bot, eot, SP, ONE, TWO, eos, -1, -1]]
    assert b.mask.tolist() == [[True] * 10, [True] * 8 + [False] * 2]
    assert b.latent_in.tolist() == [[False] * 6 + [True] * 2 + [False] * 2, [False] * 10]
    assert b.latent_out.tolist() == [[False] * 5 + [True] * 2 + [False] * 3, [False] * 10]
    assert b.eot_at.tolist() == [7, 3]
    assert not b.chain_mask.any()
    # a sampled answer may hold the pad id itself: the mask goes by length, not by id
    p = colar.layout(tok, [(tok.encode("4"), [], [pad, pad])], 2, latent=True, n_latents=[1], closed=[False])
    assert p.idx.tolist() == [[FOUR, s, TWO, bot, pad, eot, pad]] and p.mask.all()


def test_encode_keeps_the_chain_in_colar_mode(tok):
    """Regression: the chain used to be empty in colar mode (only cot kept it), so CoLaR trained on no reasoning."""
    examples = [("1+2", ["1+2=3"], "3"), ("5*2", ["5*2=10", "10-1=9"], "9")]
    enc = colar.encode(tok, examples, "colar")
    assert enc == colar.encode(tok, examples, "cot")
    assert enc[0] == (tok.encode("1+2"), tok.encode("<<1+2=3>>"), tok.encode(" 3"))
    assert enc[1][1] == tok.encode("<<5*2=10>> <<10-1=9>>")
    nocot = colar.encode(tok, examples, "nocot")
    assert [ch for _, ch, _ in nocot] == [[], []] and nocot[1][2] == tok.encode(" 9")


def test_parse_c_values():
    P = train_sft.parse_c_values
    assert P(train_sft.TrainConfig(mode="cot")) == [1] and P(train_sft.TrainConfig(mode="nocot")) == [0]
    assert P(train_sft.TrainConfig(mode="colar", c_max=3)) == [1, 2, 3]
    assert P(train_sft.TrainConfig(mode="colar", c_max=3, c_values="1, 4,5")) == [1, 4, 5]
    for bad in ("0,2", "a,b", " , "):
        with pytest.raises(UserError):
            P(train_sft.TrainConfig(mode="colar", c_values=bad))


# --- colar_loss() ------------------------------------------------------------------------------------------------
EXAMPLES = [("1+2", ["1+2=3"], "3"), ("12*3", ["12*3=36", "36-1=35"], "35"), ("4", [], "4")]


def colar_setup(tok, c, examples=EXAMPLES):
    """A tiny model (its own init), a fresh latent head in training mode, and the CoLaR batch of `examples`."""
    model = tiny_gpt(tok.n_vocab, block_size=64, seed=0)
    head = LatentHead(16)
    encoded = colar.encode(tok, examples, "colar")
    return model, head, encoded, colar.layout(tok, encoded, c, latent=True)


def capture_forward(monkeypatch, model):
    """The keyword arguments of the model's last forward pass, and the hidden states it returned."""
    seen = {}
    orig = model.forward

    def spy(*args, **kw):
        out = orig(*args, **kw)
        seen.update(kw, hidden=out[2].detach())
        return out

    monkeypatch.setattr(model, "forward", spy)
    return seen


def capture_latent_loss(monkeypatch):
    """What colar_loss lays out (target (B, T, C) and covered (B, T), from latent_targets) and what it hands to
    latent_loss (the hidden states and targets at the covered positions, (M, C), the kind, alpha and the noise)."""
    seen = {}
    orig_loss, orig_targets = colar.latent_loss, colar.latent_targets

    def spy_targets(*args):
        target, covered = orig_targets(*args)
        seen.update(target=target, covered=covered)
        return target, covered

    def spy_loss(head, h, target, kind="soft_mse", alpha=0.0, eps=None):
        seen.update(h_m=h, target_m=target, kind=kind, alpha=alpha, eps=eps)
        return orig_loss(head, h, target, kind, alpha, eps)

    monkeypatch.setattr(colar, "latent_targets", spy_targets)
    monkeypatch.setattr(colar, "latent_loss", spy_loss)
    return seen


def rows_of(encoded, c):
    """Per row, worked out from the layout: P (prompt length, <|bot|> at P - 1), K, the chunks of the chain (lists of
    ids), n (positions fed)."""
    rows = []
    for q, chain, ans in encoded:
        P = len(q) + 2 + len(str(c))
        K = -(-len(chain) // c)
        rows.append((P, K, [chain[k * c:(k + 1) * c] for k in range(K)], P + K + 1 + len(ans)))
    return rows


def test_colar_loss_ce_labels_come_from_the_next_chunk(monkeypatch, tok):
    c = 3
    model, head, encoded, b = colar_setup(tok, c)
    seen = capture_forward(monkeypatch, model)
    firsts_differ = False
    for seed in range(8):
        ce, lat, _ = colar.colar_loss(model, head, b, c, tok.eot, torch.Generator().manual_seed(seed))
        tgt = seen["targets"]
        assert tgt.shape == b.targets.shape and torch.isfinite(ce) and torch.isfinite(lat)
        expect = b.targets.clone()
        for i, (P, K, chunks, n) in enumerate(rows_of(encoded, c)):
            assert b.eot_at[i] == P + K - 1
            for k in range(K):  # <|bot|> (k = 0) and latent k - 1 predict one token of chunk k
                label = tgt[i, P - 1 + k].item()
                assert label in chunks[k], (i, k, label, chunks[k])
                firsts_differ |= label != chunks[k][0]
                expect[i, P - 1 + k] = label
            assert tgt[i, P + K - 1] == tok.eot
        assert torch.equal(tgt, expect)  # nothing else changed
    assert firsts_differ  # a uniform draw, not always the chunk's first token


@pytest.mark.parametrize("pool", ["sqrt", "mean"])
def test_colar_loss_latent_inputs_and_targets(monkeypatch, tok, pool):
    c = 2
    model, head, encoded, b = colar_setup(tok, c)
    fwd = capture_forward(monkeypatch, model)
    lat_args = capture_latent_loss(monkeypatch)
    colar.colar_loss(model, head, b, c, tok.eot, torch.Generator().manual_seed(0), pool=pool, kind="nll", alpha=0.25)
    x, target, covered = fwd["embeds"], lat_args["target"], lat_args["covered"]
    assert lat_args["kind"] == "nll" and lat_args["alpha"] == 0.25 and lat_args["eps"] is None  # nll draws no noise
    assert not target.requires_grad  # detached: no gradient into the embedding table through the target
    W = model.wte.weight.detach()
    expected = torch.zeros_like(covered)
    for i, (P, K, chunks, n) in enumerate(rows_of(encoded, c)):
        comp = []
        for ch in chunks:  # the slow reference: sum of the chunk's embedding rows / sqrt(n) or / n
            div = math.sqrt(len(ch)) if pool == "sqrt" else len(ch)
            comp.append(sum(W[t] for t in ch) / div)
        for k in range(K):
            torch.testing.assert_close(x[i, P + k], comp[k])            # the compressed embeddings fill the slots
            torch.testing.assert_close(target[i, P - 1 + k], comp[k])   # and are the next-step targets
            expected[i, P - 1 + k] = True
        torch.testing.assert_close(target[i, P + K - 1], W[tok.eot])    # the last latent predicts <|eot|>
        expected[i, P + K - 1] = True
        others = [j for j in range(n) if j not in range(P, P + K)]
        torch.testing.assert_close(x[i, others], W[b.idx[i, others]])  # token positions hold token embeddings
    assert torch.equal(covered, expected)
    assert (target[~covered] == 0).all()
    # the latent loss sees the hidden states and targets of exactly those positions, in order
    assert torch.equal(lat_args["target_m"], target[covered])
    torch.testing.assert_close(lat_args["h_m"], fwd["hidden"][covered])
    # the head's scale became the RMS entry of those targets (first update)
    rms = target[covered].pow(2).mean().sqrt().item()
    assert head.scale.item() == pytest.approx(rms, rel=1e-5)


def test_colar_loss_soft_mse_noise_covers_the_latent_positions(monkeypatch, tok):
    c = 2
    model, head, _, b = colar_setup(tok, c)
    lat_args = capture_latent_loss(monkeypatch)
    colar.colar_loss(model, head, b, c, tok.eot, torch.Generator().manual_seed(0))
    assert lat_args["kind"] == "soft_mse" and lat_args["eps"].shape == lat_args["target_m"].shape
    head.deterministic = True  # the DL ablation: no noise is drawn
    colar.colar_loss(model, head, b, c, tok.eot, torch.Generator().manual_seed(0))
    assert lat_args["eps"] is None


def test_colar_loss_gradients_reach_model_and_head(tok):
    c = 2
    model, head, _, b = colar_setup(tok, c)
    ce, lat, stats = colar.colar_loss(model, head, b, c, tok.eot, torch.Generator().manual_seed(0))
    assert stats["norm"] > 0 and stats["sigma"] > 0
    ce.backward(retain_graph=True)
    assert all(p.grad is None for p in head.parameters())  # the CE does not touch the latent head
    for p in (model.wte.weight, model.blocks[0].attn.c_attn.weight, model.blocks[0].mlp.c_fc.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    lat.backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    for name in ("blocks.0.attn.c_attn.weight", "blocks.0.mlp.c_fc.weight", "ln_f.weight", "wte.weight"):
        p = dict(model.named_parameters())[name]
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_colar_loss_runs_the_latent_head_in_fp32_under_bf16_autocast(tok):
    """train_sft runs the loss under bf16 autocast on CUDA; the latent head must still compute in fp32, as it does
    when decoding and in RL (bf16 keeps ~3 significant digits of a mean whose sigma SFT drives to ~1e-4). CPU
    autocast stands in for CUDA's: there too a Linear under it computes in bf16."""
    c = 2
    model, head, _, b = colar_setup(tok, c)
    out_dtypes = []
    head.register_forward_hook(lambda mod, args, out: out_dtypes.append((args[0].dtype, out[0].dtype, out[1].dtype)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.blocks[0].mlp.c_fc(torch.zeros(1, 16)).dtype == torch.bfloat16  # autocast is on for the model
        ce, lat, _ = colar.colar_loss(model, head, b, c, tok.eot, torch.Generator().manual_seed(0), self_feed=0.5)
    assert out_dtypes == [(torch.float32,) * 3] * 2  # the self-fed prediction, then the loss
    assert lat.dtype == torch.float32 and torch.isfinite(lat)


def test_colar_loss_without_chunk_labels_supervises_only_bot_eot_answer(monkeypatch, tok):
    c = 3
    model, head, encoded, b = colar_setup(tok, c)
    seen = capture_forward(monkeypatch, model)
    ce, lat, _ = colar.colar_loss(model, head, b, c, tok.eot, torch.Generator().manual_seed(0), chunk_labels=False)
    tgt = seen["targets"]
    assert torch.equal(tgt, b.targets)
    for i, (P, K, chunks, n) in enumerate(rows_of(encoded, c)):
        supervised = (tgt[i] != -1).nonzero().flatten().tolist()
        assert supervised == [P - 2, P + K - 1] + list(range(P + K, n))
        assert tgt[i, P - 2] == tok.bot and tgt[i, P + K - 1] == tok.eot and tgt[i, n - 1] == tok.eos
    # row 0 by hand: "1+2" <|speed|> 3 <|bot|> [3 slots] <|eot|> " 3"
    assert (tgt[0] != -1).nonzero().flatten().tolist() == [4, 8, 9, 10, 11]
    assert torch.isfinite(ce) and torch.isfinite(lat)


def test_colar_loss_all_chains_empty(monkeypatch, tok):
    c = 3
    model, head, _, b = colar_setup(tok, c, examples=[("1+2", [], "3"), ("45", [], "9")])
    lat_args = capture_latent_loss(monkeypatch)
    ce, lat, stats = colar.colar_loss(model, head, b, c, tok.eot, torch.Generator().manual_seed(0))
    assert torch.isfinite(ce) and torch.isfinite(lat) and ce.item() > 0 and math.isfinite(stats["sigma"])
    # only the <|bot|> positions are trained, towards the <|eot|> embedding
    assert lat_args["covered"].nonzero().tolist() == [[0, 5], [1, 4]]
    (ce + lat).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_feed_own_latents_replaces_the_chosen_inputs_with_detached_predictions(tok):
    """The latent inputs chosen by `feed` become the head's prediction (scale applied) from a teacher-forced pass,
    made at the position before each; the others, and every token position, are untouched."""
    model = tiny_gpt(tok.n_vocab, block_size=64, seed=0)
    head = LatentHead(16).eval()
    head.scale.fill_(0.5)
    ex = colar.encode(tok, [("1+2", ["1+2=3"], "3"), ("4", ["4"], "4")], "colar")  # chains of 7 and 3 tokens
    b = colar.layout(tok, ex, 2, latent=True)
    z, zmask, _ = compress(model.wte(b.chain), b.chain, b.chain_mask, 2)
    x = model.wte(b.idx).masked_scatter(b.latent_in[..., None], z[zmask])
    assert int(b.latent_in.sum()) == 4 + 2
    assert torch.equal(colar.feed_own_latents(model, head, x, b, torch.zeros(6, 1, dtype=torch.bool)), x)
    feed = torch.tensor([True, False, False, True, True, False])[:, None]
    fed = colar.feed_own_latents(model, head, x, b, feed)
    _, _, h = model(embeds=x, mask=b.mask)
    mu, _ = head(h)
    k = 0
    for i in range(2):
        outs = b.latent_out[i].nonzero().squeeze(1).tolist()
        ins = b.latent_in[i].nonzero().squeeze(1).tolist()
        assert [o + 1 for o in outs] == ins
        for o, p in zip(outs, ins):
            if feed[k]:
                torch.testing.assert_close(fed[i, p], 0.5 * mu[i, o])
            else:
                assert torch.equal(fed[i, p], x[i, p])
            k += 1
    keep = ~b.latent_in
    assert torch.equal(fed[keep], x[keep])
    # the fed predictions are detached: no gradient flows back through them into the model or the head
    every = colar.feed_own_latents(model, head, x, b, torch.ones(6, 1, dtype=torch.bool))
    every[b.latent_in].sum().backward()
    assert all(p.grad is None or not p.grad.any() for p in list(model.parameters()) + list(head.parameters()))


# --- end to end: train_sft.main (colar) -> evaluate.main, and exact resume -----------------------------------------
def test_colar_checkpoint_contents(tiny_runs):
    ckpt = load_checkpoint(tiny_runs["colar"], "latest")
    assert ckpt["step"] == 8 and ckpt["script"] == "train_sft" and ckpt["config"]["mode"] == "colar"
    assert ckpt["latent_head"]["scale"].item() > 0  # derived from the model's embeddings during training
    model, head, tok, best = load_model(tiny_runs["colar"])
    assert isinstance(head, LatentHead) and not head.training and tok.kind == "char"
    assert torch.equal(head.scale, best["latent_head"]["scale"]) and model.cfg.n_embd == 32


def test_evaluate_aggregates_scripted_rows_by_hand(monkeypatch):
    """evaluate.evaluate over decoding passes whose rows are given: seed 0 answers rows 0 and 1 right, row 2 with
    the right value but cut short by the cap (wrong), row 3 wrong: accuracy 2/4, lengths (2 + 4 + 4 + 2) / 4 = 3,
    1/4 at the cap; seed 1 answers row 0 alone, every length 4: 1/4, 4, 0. Means 0.375, 3.5, 0.125; 95% t-intervals
    with 1 degree of freedom (t = 12.706): sd(0.5, 0.25) = 0.25 / sqrt(2), so 12.706 x 0.1768 / sqrt(2) = 1.588;
    sd(3, 4) = 0.7071, so 6.353."""
    import sample
    rows = {0: [("5", True, 2, False), ("7", True, 4, False), ("9", False, 4, True), ("x", True, 2, False)],
            1: [("5", True, 4, False), ("x", True, 4, False), ("x", True, 4, False), ("x", True, 4, False)]}
    monkeypatch.setattr(sample, "answer_questions", lambda model, tok, questions, c, temperature, top_p, seed, **kw: [
        dict(answer=a, finished=f, length=n, hit_cap=h) for a, f, n, h in rows[seed]])
    examples = [(f"q{i}", [], a) for i, a in enumerate(["5", "7", "9", "1"])]
    r = evaluate.evaluate(None, None, examples, "colar", 2, "sampled", seeds=(0, 1), head=object())
    assert (r["accuracy"], r["mean_len"], r["hit_cap"]) == (0.375, 3.5, 0.125)
    assert r["ci95"] == pytest.approx(1.588, abs=1e-3) and r["len_ci95"] == pytest.approx(6.353, abs=1e-3)
    greedy = evaluate.evaluate(None, None, examples, "colar", 2, "greedy", head=object())  # one pass, seed 0
    assert (greedy["accuracy"], greedy["mean_len"], greedy["hit_cap"], greedy["ci95"]) == (0.5, 3.0, 0.25, None)


def test_evaluate_colar_records(tiny_runs, tmp_path):
    out_json = str(tmp_path / "r.json")
    recs = evaluate.main(evaluate.EvalConfig(ckpt=tiny_runs["colar"], split="test", n=4, decode="greedy,sampled",
                                             seeds="0,1", max_latents=4, out=out_json, device="cpu"))
    assert [(r["c"], r["decode"]) for r in recs] == [(1, "greedy"), (1, "sampled"), (2, "greedy"), (2, "sampled")]
    keys = {"method", "c", "decode", "split", "n", "accuracy", "mean_len", "ci95", "len_ci95", "seeds", "checkpoint",
            "seconds", "hit_cap"}
    model, head, tok, _ = load_model(tiny_runs["colar"])
    examples = read_split(f"{tiny_runs['data']}/test.txt")[:4]
    for r in recs:
        assert keys <= set(r) and r["method"] == "colar" and r["n"] == 4
        assert 0 <= r["hit_cap"] <= 1 and 0 <= r["mean_len"] <= 4
    for r in (x for x in recs if x["decode"] == "greedy"):  # the aggregates of a direct decoding pass
        res = answer_questions(model, tok, [q for q, _, _ in examples], r["c"], head=head, max_latents=4)
        assert r["mean_len"] == pytest.approx(sum(x["length"] for x in res) / 4)
        assert r["hit_cap"] == pytest.approx(sum(x["hit_cap"] for x in res) / 4)
        correct = sum(x["finished"] and answers_match(x["answer"], a) for x, (_, _, a) in zip(res, examples))
        assert r["accuracy"] == pytest.approx(correct / 4)
    for r in (x for x in recs if x["decode"] == "sampled"):  # the means and intervals of one pass per seed
        res = [answer_questions(model, tok, [q for q, _, _ in examples], r["c"], 1.0, 0.9, seed, head=head,
                                latent_temperature=1.0, max_latents=4, stop="sampled") for seed in (0, 1)]
        lens = [sum(x["length"] for x in rs) / 4 for rs in res]
        accs = [sum(x["finished"] and answers_match(x["answer"], a) for x, (_, _, a) in zip(rs, examples)) / 4
                for rs in res]
        assert r["mean_len"] == pytest.approx(sum(lens) / 2) and r["len_ci95"] == pytest.approx(evaluate.ci95(lens))
        assert r["accuracy"] == pytest.approx(sum(accs) / 2) and r["ci95"] == pytest.approx(evaluate.ci95(accs))
    # max_latents 0: no latent can be fed
    recs0 = evaluate.main(evaluate.EvalConfig(ckpt=tiny_runs["colar"], split="test", n=4, decode="greedy",
                                              max_latents=0, device="cpu"))
    assert [r["mean_len"] for r in recs0] == [0.0, 0.0]


def test_evaluate_colar_c_flag(tiny_runs, capsys):
    recs = evaluate.main(evaluate.EvalConfig(ckpt=tiny_runs["colar"], split="test", n=2, c="3", decode="greedy",
                                             max_latents=2, device="cpu"))
    assert "warning: c = [3] was never trained" in capsys.readouterr().out
    assert [r["c"] for r in recs] == [3] and "hit_cap" in recs[0]
    with pytest.raises(UserError, match=">= 1"):
        evaluate.main(evaluate.EvalConfig(ckpt=tiny_runs["colar"], split="test", n=2, c="0", decode="greedy",
                                          device="cpu"))
    with pytest.raises(UserError, match="CoLaR"):
        evaluate.main(evaluate.EvalConfig(ckpt=tiny_runs["cot"], split="test", n=2, c="2", decode="greedy",
                                          device="cpu"))


def test_colar_resume_is_exact(tiny_runs, tmp_path):
    data, cot = tiny_runs["data"], tiny_runs["cot"]
    straight = load_checkpoint(tiny_runs["colar"], "latest")  # 8 steps straight
    out = str(tmp_path / "colar")
    train_sft.main(tiny_colar_cfg(data, out, cot, stop_at=4))
    assert load_checkpoint(out, "latest")["step"] == 4
    resumed = train_sft.main(tiny_colar_cfg(data, out, cot, resume=True))
    assert resumed["step"] == 8
    for saved, module in ((straight["model"], resumed["model"]), (straight["latent_head"], resumed["head"])):
        sd = module.state_dict()
        assert saved.keys() == sd.keys() and all(torch.equal(saved[k], sd[k]) for k in sd)
    # and training moved the weights away from the CoT start and from a fresh head
    name = "blocks.0.attn.c_attn.weight"
    assert not torch.equal(load_checkpoint(cot)["model"][name], straight["model"][name])
    torch.manual_seed(1337)  # the run's seed: the head as it was built, before training
    GPT(resumed["model"].cfg)
    fresh = LatentHead(32)
    assert not torch.equal(fresh.mu.weight, straight["latent_head"]["mu.weight"])


def test_colar_resume_with_the_starting_command_line(tiny_runs, tmp_path):
    out = str(tmp_path / "colar")
    # the model size is left to --init_from (the defaults 4 layers x 128 are not the CoT model's 1 x 32)
    cfg = tiny_colar_cfg(tiny_runs["data"], out, tiny_runs["cot"], max_steps=4, stop_at=2, eval_every=4,
                         n_layer=4, n_head=4, n_embd=128)
    first = train_sft.main(cfg)
    assert first["model"].cfg.n_embd == 32
    assert train_sft.main(replace(cfg, stop_at=0, resume=True))["step"] == 4

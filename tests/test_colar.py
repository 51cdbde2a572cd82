"""Tests of CoLaR training and inference: the CoLaR batch and loss of train_sft.py, latent decoding in sample.py
(against a slow reference without a KV cache), and evaluate/resume of CoLaR checkpoints end to end.

Run: .venv/bin/python -m pytest tests
"""
import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

import evaluate
import train_sft
from common import UserError, load_checkpoint, load_model
from compress import compress, sample_chunk_labels
from data import synthetic
from data.format import answers_match, read_split
from latent_head import LatentHead
from model import GPT, GPTConfig
from sample import answer_questions, generate_latent
from tokenizer import Tokenizer


# --- make_colar_batch() and encode_examples() ------------------------------------------------------------------
def test_make_colar_batch_layout_by_hand():
    tok = Tokenizer("char")
    LT, GT = tok.encode("<<"), tok.encode(">>")
    assert len(LT) == len(GT) == 1
    q, chain, ans = tok.encode("1+2"), tok.encode("<<1+2=3>>"), tok.encode(" 3")
    assert len(chain) == 7 and chain == LT + [ord("1"), ord("+"), ord("2"), ord("="), ord("3")] + GT
    b = train_sft.make_colar_batch(tok, [(q, chain, ans)], c=3)
    pad, bot, eot, eos, speed = tok.pad, tok.bot, tok.eot, tok.eos, tok.speed
    # positions: 0-2 question, 3 <|speed|>, 4 "3", 5 <|bot|>, 6-8 latent slots (K = 3), 9 <|eot|>, 10-11 " 3"
    assert b["idx"].tolist() == [[49, 43, 50, speed, 51, bot, pad, pad, pad, eot, 32, 51]]
    assert b["targets"].tolist() == [[-1, -1, -1, -1, bot, -1, -1, -1, eot, 32, 51, eos]]
    assert b["latent_in"].tolist() == [[False] * 6 + [True] * 3 + [False] * 3]
    assert b["slot"].tolist() == [[False] * 5 + [True] * 3 + [False] * 4]
    assert b["eot_at"].tolist() == [8]
    assert b["mask"].tolist() == [[True] * 12]
    assert b["chain"].tolist() == [chain] and b["chain_mask"].tolist() == [[True] * 7]
    # an empty chain: K = 0, <|bot|> predicts <|eot|>
    e = train_sft.make_colar_batch(tok, [(q, [], ans)], c=3)
    assert e["idx"].tolist() == [[49, 43, 50, speed, 51, bot, eot, 32, 51]]
    assert e["targets"].tolist() == [[-1, -1, -1, -1, bot, eot, 32, 51, eos]]
    assert not e["latent_in"].any() and not e["slot"].any() and e["eot_at"].tolist() == [5]
    assert e["chain"].shape == (1, 1) and not e["chain_mask"].any()
    # two rows, right-padded to the longer one
    two = train_sft.make_colar_batch(tok, [(q, [], ans), (q, chain, ans)], c=3)
    assert two["idx"].shape == (2, 12) and two["chain"].shape == (2, 7)
    assert two["idx"][0].tolist() == e["idx"][0].tolist() + [pad] * 3
    assert two["targets"][0].tolist() == e["targets"][0].tolist() + [-1] * 3
    assert two["mask"].tolist() == [[True] * 9 + [False] * 3, [True] * 12]
    assert two["idx"][1].tolist() == b["idx"][0].tolist() and two["targets"][1].tolist() == b["targets"][0].tolist()
    assert two["eot_at"].tolist() == [5, 8]
    assert two["chain_mask"].tolist() == [[False] * 7, [True] * 7]
    # c = 2: K = ceil(7 / 2) = 4 slots
    c2 = train_sft.make_colar_batch(tok, [(q, chain, ans)], c=2)
    assert c2["latent_in"][0].nonzero().flatten().tolist() == [6, 7, 8, 9] and c2["eot_at"].tolist() == [9]
    assert c2["idx"][0, 4].item() == ord("2")


def test_encode_examples_keeps_chain_in_colar_mode():
    """Regression: the chain used to be empty in colar mode (only cot kept it), so CoLaR trained on no reasoning."""
    tok = Tokenizer("char")
    examples = [("1+2", ["1+2=3"], "3"), ("5*2", ["5*2=10", "10-1=9"], "9")]
    colar = train_sft.encode_examples(tok, examples, "colar")
    assert colar == train_sft.encode_examples(tok, examples, "cot")
    assert colar[0] == (tok.encode("1+2"), tok.encode("<<1+2=3>>"), tok.encode(" 3"))
    assert colar[1][1] == tok.encode("<<5*2=10>> <<10-1=9>>")
    nocot = train_sft.encode_examples(tok, examples, "nocot")
    assert [ch for _, ch, _ in nocot] == [[], []] and nocot[1][2] == tok.encode(" 9")


def test_parse_c_values():
    P = train_sft.parse_c_values
    assert P(train_sft.TrainConfig(mode="cot")) == [1] and P(train_sft.TrainConfig(mode="nocot")) == [0]
    assert P(train_sft.TrainConfig(mode="colar", c_max=3)) == [1, 2, 3]
    assert P(train_sft.TrainConfig(mode="colar", c_max=3, c_values="1, 4,5")) == [1, 4, 5]
    for bad in ("0,2", "a,b", " , "):
        with pytest.raises(UserError):
            P(train_sft.TrainConfig(mode="colar", c_values=bad))


def test_make_optimizer_groups_and_deduplicates():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=8))
    head = LatentHead(8)
    head.mu.bias.requires_grad_(False)  # a frozen parameter is left out
    opt = train_sft.make_optimizer([model, head, model], lr=1e-3, weight_decay=0.1)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids))  # the tied wte / lm_head and the repeated model are in once
    expected = {id(p) for m in (model, head) for p in m.parameters() if p.requires_grad}
    assert set(ids) == expected and id(head.mu.bias) not in ids and id(model.wte.weight) in ids
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert any(p is head.net[3].weight for p in no_decay["params"])  # the head's LayerNorm is not decayed


# --- colar_loss() ----------------------------------------------------------------------------------------------
EXAMPLES = [("1+2", ["1+2=3"], "3"), ("12*3", ["12*3=36", "36-1=35"], "35"), ("4", [], "4")]


def colar_setup(c=3, examples=EXAMPLES, seed=0, **cfg_kw):
    tok = Tokenizer("char")
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=tok.n_vocab, block_size=64, n_layer=1, n_head=2, n_embd=16))
    head = LatentHead(16)
    encoded = train_sft.encode_examples(tok, examples, "colar")
    b = train_sft.make_colar_batch(tok, encoded, c)
    cfg = train_sft.TrainConfig(mode="colar", **cfg_kw)
    return tok, model, head, encoded, b, cfg


def capture_forward(monkeypatch, model):
    seen = {}
    orig = model.forward

    def spy(*args, **kw):
        seen.update(kw)
        out = orig(*args, **kw)
        if kw.get("return_hidden"):
            seen["hidden"] = out[-1].detach()
        return out

    monkeypatch.setattr(model, "forward", spy)
    return seen


def capture_latent_loss(monkeypatch):
    """What colar_loss lays out (target (B, T, C) and mask (B, T) from latent_targets) and what it hands to
    latent_loss (the hidden states and targets at the masked positions, (N, C), the kind and alpha)."""
    seen = {}
    orig_loss, orig_targets = train_sft.latent_loss, train_sft.latent_targets

    def spy_targets(*args):
        target, lmask, chunk_ids = orig_targets(*args)
        seen.update(target=target, mask=lmask)
        return target, lmask, chunk_ids

    def spy_loss(head, h, target, mask, kind="soft_mse", alpha=0.0, generator=None, eps=None):
        seen.update(h_n=h, target_n=target, mask_n=mask, kind=kind, alpha=alpha)
        return orig_loss(head, h, target, mask, kind, alpha, generator, eps)

    monkeypatch.setattr(train_sft, "latent_targets", spy_targets)
    monkeypatch.setattr(train_sft, "latent_loss", spy_loss)
    return seen


def layout(tok, encoded, c):
    """Per row: P (prompt length, <|bot|> at P - 1), K, the chunks of the chain (lists of ids), n (positions fed)."""
    rows = []
    for q, chain, ans in encoded:
        P = len(q) + 2 + len(str(c))
        K = -(-len(chain) // c)
        rows.append((P, K, [chain[k * c:(k + 1) * c] for k in range(K)], P + K + 1 + len(ans)))
    return rows


def test_colar_loss_ce_labels_come_from_the_next_chunk(monkeypatch):
    c = 3
    tok, model, head, encoded, b, cfg = colar_setup(c, pool="sqrt", latent_loss="soft_mse", chunk_labels=True)
    seen = capture_forward(monkeypatch, model)
    firsts_differ = False
    for seed in range(8):
        ce, lat, _ = train_sft.colar_loss(model, head, b, c, tok.eot, cfg, torch.Generator().manual_seed(seed))
        tgt = seen["targets"]
        assert tgt.shape == b["targets"].shape and torch.isfinite(ce) and torch.isfinite(lat)
        expect = b["targets"].clone()
        for i, (P, K, chunks, n) in enumerate(layout(tok, encoded, c)):
            assert b["eot_at"][i] == P + K - 1
            for k in range(K):  # <|bot|> (k = 0) and latent k - 1 predict one token of chunk k
                label = tgt[i, P - 1 + k].item()
                assert label in chunks[k], (i, k, label, chunks[k])
                firsts_differ |= label != chunks[k][0]
                expect[i, P - 1 + k] = label
            assert tgt[i, P + K - 1] == tok.eot
        assert torch.equal(tgt, expect)  # nothing else changed
        # exactly compress's chunk_ids, drawn with the generator's first random numbers
        _, zmask, chunk_ids = compress(model.wte(b["chain"]), b["chain"], b["chain_mask"], c)
        labels = sample_chunk_labels(chunk_ids, torch.Generator().manual_seed(seed))[zmask]
        assert torch.equal(tgt[b["slot"]], labels)
    assert firsts_differ  # a uniform draw, not always the chunk's first token


@pytest.mark.parametrize("pool", ["sqrt", "mean"])
def test_colar_loss_latent_inputs_and_targets(monkeypatch, pool):
    c = 2
    tok, model, head, encoded, b, cfg = colar_setup(c, pool=pool, latent_loss="nll", latent_alpha=0.25)
    fwd = capture_forward(monkeypatch, model)
    lat_args = capture_latent_loss(monkeypatch)
    train_sft.colar_loss(model, head, b, c, tok.eot, cfg, torch.Generator().manual_seed(0))
    x, target, lmask = fwd["embeds"], lat_args["target"], lat_args["mask"]
    assert lat_args["kind"] == "nll" and lat_args["alpha"] == 0.25
    assert not target.requires_grad  # detached: no gradient into the embedding table through the target
    W = model.wte.weight.detach()
    expected_mask = torch.zeros_like(lmask)
    for i, (P, K, chunks, n) in enumerate(layout(tok, encoded, c)):
        comp = []
        for ch in chunks:  # the slow reference: sum of the chunk's embedding rows / sqrt(n) or / n
            div = math.sqrt(len(ch)) if pool == "sqrt" else len(ch)
            comp.append(sum(W[t] for t in ch) / div)
        for k in range(K):
            torch.testing.assert_close(x[i, P + k], comp[k])            # the compressed embeddings fill the slots
            torch.testing.assert_close(target[i, P - 1 + k], comp[k])   # and are the next-step targets
            expected_mask[i, P - 1 + k] = True
        torch.testing.assert_close(target[i, P + K - 1], W[tok.eot])    # the last latent predicts <|eot|>
        expected_mask[i, P + K - 1] = True
        others = [j for j in range(n) if j not in range(P, P + K)]
        torch.testing.assert_close(x[i, others], W[b["idx"][i, others]])  # token positions hold token embeddings
    assert torch.equal(lmask, expected_mask)
    assert (target[~lmask] == 0).all()
    # the latent loss sees the hidden states and targets of exactly those positions, in order
    assert torch.equal(lat_args["target_n"], target[lmask]) and bool(lat_args["mask_n"].all())
    torch.testing.assert_close(lat_args["h_n"], fwd["hidden"][lmask])
    # the head's scale became the RMS entry of those targets (first update)
    rms = target[lmask].pow(2).mean().sqrt().item()
    assert head.scale.item() == pytest.approx(rms, rel=1e-5)


def test_colar_loss_gradients_reach_model_and_head():
    c = 2
    tok, model, head, _, b, cfg = colar_setup(c, latent_loss="soft_mse")
    ce, lat, stats = train_sft.colar_loss(model, head, b, c, tok.eot, cfg, torch.Generator().manual_seed(0))
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


def test_colar_loss_without_chunk_labels_supervises_only_bot_eot_answer(monkeypatch):
    c = 3
    tok, model, head, encoded, b, cfg = colar_setup(c, chunk_labels=False)
    seen = capture_forward(monkeypatch, model)
    ce, lat, _ = train_sft.colar_loss(model, head, b, c, tok.eot, cfg, torch.Generator().manual_seed(0))
    tgt = seen["targets"]
    assert torch.equal(tgt, b["targets"])
    for i, (P, K, chunks, n) in enumerate(layout(tok, encoded, c)):
        supervised = (tgt[i] != -1).nonzero().flatten().tolist()
        assert supervised == [P - 2, P + K - 1] + list(range(P + K, n))
        assert tgt[i, P - 2] == tok.bot and tgt[i, P + K - 1] == tok.eot and tgt[i, n - 1] == tok.eos
    # row 0 by hand: "1+2" <|speed|> 3 <|bot|> [3 slots] <|eot|> " 3"
    assert (tgt[0] != -1).nonzero().flatten().tolist() == [4, 8, 9, 10, 11]
    assert torch.isfinite(ce) and torch.isfinite(lat)


def test_colar_loss_all_chains_empty(monkeypatch):
    c = 3
    tok, model, head, encoded, b, cfg = colar_setup(c, examples=[("1+2", [], "3"), ("45", [], "9")])
    lat_args = capture_latent_loss(monkeypatch)
    ce, lat, stats = train_sft.colar_loss(model, head, b, c, tok.eot, cfg, torch.Generator().manual_seed(0))
    assert torch.isfinite(ce) and torch.isfinite(lat) and ce.item() > 0 and math.isfinite(stats["sigma"])
    # only the <|bot|> positions are trained, towards the <|eot|> embedding
    assert lat_args["mask"].nonzero().tolist() == [[0, 5], [1, 4]]
    (ce + lat).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# --- generate_latent() against a slow reference ----------------------------------------------------------------
V = 24
FAKE_TOK = SimpleNamespace(pad=23, eot=1, eos=16)  # generate_latent only needs these ids
PROMPTS = [[1, 2, 3, 4, 5], [6, 7], [8, 9, 10, 11], [12, 13, 14]]


def latent_model(seed=3):
    """A tiny random GPT with large weights (greedy decoding varies) and a latent head of scale 1, in float64 so that
    the batched, left-padded, cached decoding and the reference agree to far below any argmax gap."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=V, block_size=48, n_layer=1, n_head=2, n_embd=16))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, p.size(-1) ** -0.5)
    head = LatentHead(16)
    head.update_scale(torch.ones(1, 1, 16), torch.ones(1, 1, dtype=torch.bool))  # scale = RMS of ones = 1
    assert head.scale.item() == 1.0
    return model.double().eval(), head.double().eval()


@torch.no_grad()
def slow_latent_decode(model, head, prompt, eot, eos, max_latents, max_steps):
    """Reference: one prompt, no cache: each step re-runs the whole forward over [prompt embeddings + what was fed]."""
    x = model.wte(torch.tensor(prompt))
    n, thinking, answer, finished, hit_cap = 0, True, [], False, False
    for _ in range(max_steps):
        logits, h = model(embeds=x[None], return_hidden=True)
        t = int(logits[0, -1].argmax())
        if thinking:
            if t == eot or n >= max_latents:
                hit_cap, thinking = n >= max_latents and t != eot, False
                nxt = model.wte.weight[eot]
            else:
                nxt = head(h[0, -1])[0] * head.scale
                n += 1
        elif t == eos:
            finished = True
            break
        else:
            answer.append(t)
            nxt = model.wte.weight[t]
        x = torch.cat([x, nxt[None]])
    return {"n_latents": n, "answer": answer, "finished": finished, "hit_cap": hit_cap}


def test_generate_latent_greedy_matches_slow_reference():
    model, head = latent_model()
    max_latents, max_answer = 4, 6
    out = generate_latent(model, head, FAKE_TOK, PROMPTS, max_latents, max_answer)
    # every row gets the same step budget, set by the longest (padded) prompt
    steps = min(max_latents + 1 + max_answer, model.cfg.block_size - max(map(len, PROMPTS)))
    ref = [slow_latent_decode(model, head, p, FAKE_TOK.eot, FAKE_TOK.eos, max_latents, steps) for p in PROMPTS]
    # the case is a useful one: rows stop at different times, by <|eot|> and by the cap, some answers close
    assert len({r["n_latents"] for r in ref}) >= 3
    assert any(r["hit_cap"] for r in ref) and any(not r["hit_cap"] and r["n_latents"] > 0 for r in ref)
    assert any(r["finished"] for r in ref) and not all(r["finished"] for r in ref)
    for o, r in zip(out, ref):
        assert {k: o[k] for k in r} == r
        assert o["latents"] == [] and o["lm_top"] == []
    # deterministic
    assert generate_latent(model, head, FAKE_TOK, PROMPTS, max_latents, max_answer) == out
    # keep_latents: the fed vectors are the head's means, one per latent
    kept = generate_latent(model, head, FAKE_TOK, PROMPTS, max_latents, max_answer, keep_latents=True)
    for o, k in zip(out, kept):
        assert len(k["latents"]) == len(k["lm_top"]) == o["n_latents"] and k["answer"] == o["answer"]
    # smaller caps; at cap 2 a row reaches the cap just as the LM head says <|eot|>: that is no hit
    coincide = 0
    for cap in (0, 1, 2):
        capped = generate_latent(model, head, FAKE_TOK, PROMPTS, cap, max_answer)
        steps = min(cap + 1 + max_answer, model.cfg.block_size - 5)
        ref = [slow_latent_decode(model, head, p, FAKE_TOK.eot, FAKE_TOK.eos, cap, steps) for p in PROMPTS]
        assert [{k: o[k] for k in r} for o, r in zip(capped, ref)] == ref
        assert all(o["n_latents"] <= cap for o in capped)
        coincide += sum(o["n_latents"] == cap and not o["hit_cap"] for o in capped)
    assert coincide > 0


def test_generate_latent_sampled_is_seeded():
    model, head = latent_model()
    kw = dict(max_latents=4, max_answer_tokens=6, latent_temperature=1.0, temperature=1.0, top_p=0.9, stop="sampled",
              keep_latents=True)

    def run(seed):
        return generate_latent(model, head, FAKE_TOK, PROMPTS, generator=torch.Generator().manual_seed(seed), **kw)

    def flat(results):
        return [(r["n_latents"], r["answer"], r["finished"], r["hit_cap"], [z.tolist() for z in r["latents"]])
                for r in results]

    a, b, other = run(0), run(0), run(1)
    assert flat(a) == flat(b)
    assert flat(a) != flat(other)
    greedy = generate_latent(model, head, FAKE_TOK, PROMPTS, 4, 6, keep_latents=True)
    assert flat(a) != flat(greedy)


def test_answer_questions_with_head_uses_latent_decoding():
    tok = Tokenizer("char")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.n_vocab, block_size=40, n_layer=1, n_head=2, n_embd=16)).eval()
    head = LatentHead(16).eval()
    head.scale.fill_(0.5)
    qs = ["1+2", "33*4-1"]
    res = answer_questions(model, tok, qs, c=2, head=head, max_latents=3, max_new_tokens=5)
    direct = generate_latent(model, head, tok, [tok.prompt(q, 2) for q in qs], 3, 5)
    for r, d in zip(res, direct):
        assert r["length"] == d["n_latents"] and r["hit_cap"] == d["hit_cap"] and r["finished"] == d["finished"]
        assert r["answer"] == tok.decode(d["answer"]).strip() and r["chain"] == []
    # c = 0 takes the No-CoT text path even with a head
    res0 = answer_questions(model, tok, qs, c=0, head=head, max_new_tokens=5)
    assert all(r["length"] == 0 and r["hit_cap"] is False for r in res0)


# --- end to end: train_sft.main (colar) -> evaluate.main, and exact resume ---------------------------------------
@pytest.fixture(scope="module")
def colar_runs(tmp_path_factory):
    """Tiny data, a tiny CoT run, and a CoLaR run initialised from it (trained on c = 1, 2)."""
    root = tmp_path_factory.mktemp("colar")
    data = str(root / "synth")
    synthetic.main(synthetic.SynthConfig(out=data, n_train=128, n_val=8, n_test=8, steps_min=2, steps_max=3))
    cot = str(root / "cot")
    train_sft.main(tiny_cfg(data, cot, mode="cot"))
    colar = str(root / "colar")
    run = train_sft.main(colar_cfg(data, colar, cot))
    return {"data": data, "cot": cot, "colar": colar, "run": run, "root": root}


def tiny_cfg(data_dir, out_dir, **kw):
    base = dict(data_dir=data_dir, out_dir=out_dir, n_layer=1, n_head=2, n_embd=32, batch_size=16, max_steps=4,
                warmup_steps=2, eval_every=4, eval_n=4, log_every=4, device="cpu")
    base.update(kw)
    return train_sft.TrainConfig(**base)


def colar_cfg(data_dir, out_dir, init_from, **kw):
    base = dict(mode="colar", init_from=init_from, c_values="1,2", max_latents=4, max_steps=8, warmup_steps=2)
    base.update(kw)
    return tiny_cfg(data_dir, out_dir, **base)


def test_colar_checkpoint_contents(colar_runs):
    ckpt = load_checkpoint(colar_runs["colar"], "latest")
    assert ckpt["step"] == 8 and ckpt["config"]["mode"] == "colar" and ckpt["latent_head"] is not None
    assert ckpt["latent_head"]["scale"].item() > 0  # derived from the model's embeddings during training
    assert torch.equal(ckpt["latent_head"]["scale"], colar_runs["run"]["head"].scale)
    model, head, tok, best = load_model(colar_runs["colar"])
    assert isinstance(head, LatentHead) and not head.training and tok.kind == "char"
    assert torch.equal(head.scale, best["latent_head"]["scale"]) and model.cfg.n_embd == 32


def test_evaluate_colar_records(colar_runs, tmp_path):
    out_json = str(tmp_path / "r.json")
    recs = evaluate.main(evaluate.EvalConfig(ckpt=colar_runs["colar"], split="test", n=4, decode="greedy,sampled",
                                             seeds="0,1", max_latents=4, out=out_json, device="cpu"))
    assert [(r["c"], r["decode"]) for r in recs] == [(1, "greedy"), (1, "sampled"), (2, "greedy"), (2, "sampled")]
    keys = {"method", "c", "decode", "split", "n", "accuracy", "mean_len", "ci95", "len_ci95", "seeds", "checkpoint",
            "seconds", "hit_cap"}
    model, head, tok, _ = load_model(colar_runs["colar"])
    examples = read_split(f"{colar_runs['data']}/test.txt")[:4]
    for r in recs:
        assert set(r) == keys and r["method"] == "colar" and r["n"] == 4
        assert 0 <= r["hit_cap"] <= 1 and 0 <= r["mean_len"] <= 4
    for r in (x for x in recs if x["decode"] == "greedy"):  # the aggregates of a direct decoding pass
        res = answer_questions(model, tok, [q for q, _, _ in examples], r["c"], head=head, max_latents=4)
        assert r["mean_len"] == pytest.approx(sum(x["length"] for x in res) / 4)
        assert r["hit_cap"] == pytest.approx(sum(x["hit_cap"] for x in res) / 4)
        correct = sum(answers_match(x["answer"], a) for x, (_, _, a) in zip(res, examples))
        assert r["accuracy"] == pytest.approx(correct / 4)
    for r in (x for x in recs if x["decode"] == "sampled"):  # the means and intervals of one pass per seed
        res = [answer_questions(model, tok, [q for q, _, _ in examples], r["c"], 1.0, 0.9, seed, head=head,
                                latent_temperature=1.0, max_latents=4, stop="sampled") for seed in (0, 1)]
        lens = [sum(x["length"] for x in rs) / 4 for rs in res]
        accs = [sum(answers_match(x["answer"], a) for x, (_, _, a) in zip(rs, examples)) / 4 for rs in res]
        assert r["mean_len"] == pytest.approx(sum(lens) / 2) and r["len_ci95"] == pytest.approx(evaluate.ci95(lens))
        assert r["accuracy"] == pytest.approx(sum(accs) / 2) and r["ci95"] == pytest.approx(evaluate.ci95(accs))
    # max_latents 0: no latent can be fed
    recs0 = evaluate.main(evaluate.EvalConfig(ckpt=colar_runs["colar"], split="test", n=4, decode="greedy",
                                              max_latents=0, device="cpu"))
    assert [r["mean_len"] for r in recs0] == [0.0, 0.0]


def test_evaluate_colar_c_flag(colar_runs, capsys):
    recs = evaluate.main(evaluate.EvalConfig(ckpt=colar_runs["colar"], split="test", n=2, c="3", decode="greedy",
                                             max_latents=2, device="cpu"))
    assert "warning: c = [3] was never trained" in capsys.readouterr().out
    assert [r["c"] for r in recs] == [3] and "hit_cap" in recs[0]
    with pytest.raises(UserError, match=">= 1"):
        evaluate.main(evaluate.EvalConfig(ckpt=colar_runs["colar"], split="test", n=2, c="0", decode="greedy",
                                          device="cpu"))
    with pytest.raises(UserError, match="CoLaR"):
        evaluate.main(evaluate.EvalConfig(ckpt=colar_runs["cot"], split="test", n=2, c="2", decode="greedy",
                                          device="cpu"))


def test_colar_resume_is_exact(colar_runs):
    data, cot, root = colar_runs["data"], colar_runs["cot"], colar_runs["root"]
    straight = colar_runs["run"]  # 8 steps straight
    out = str(root / "colar_resumed")
    train_sft.main(colar_cfg(data, out, cot, stop_at=4))
    assert load_checkpoint(out, "latest")["step"] == 4
    resumed = train_sft.main(colar_cfg(data, out, cot, resume=True))
    assert resumed["step"] == 8
    for a, b in ((straight["model"], resumed["model"]), (straight["head"], resumed["head"])):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    # and training moved the weights away from the CoT start and from a fresh head
    name = "blocks.0.attn.c_attn.weight"
    assert not torch.equal(load_checkpoint(cot)["model"][name], straight["model"].state_dict()[name])
    torch.manual_seed(1337)  # the run's seed: the head as it was built, before training
    GPT(straight["model"].cfg)
    fresh = LatentHead(32)
    assert not torch.equal(fresh.mu.weight, straight["head"].mu.weight) and straight["head"].scale.item() > 0


def test_colar_resume_with_the_starting_command_line(colar_runs):
    data, cot, root = colar_runs["data"], colar_runs["cot"], colar_runs["root"]
    out = str(root / "colar_sized_by_init")
    # the model size is left to --init_from (the defaults 4 layers x 128 are not the CoT model's 1 x 32)
    cfg = replace(colar_cfg(data, out, cot, max_steps=4, stop_at=2), n_layer=4, n_head=4, n_embd=128)
    first = train_sft.main(cfg)
    assert first["model"].cfg.n_embd == 32
    resumed = train_sft.main(replace(cfg, stop_at=0, resume=True))
    assert resumed["step"] == 4


def test_self_feed_replaces_latent_inputs_with_detached_predictions():
    """With p = 1 every latent input becomes the head's prediction (scale applied) from a teacher-forced pass made
    at the slot before it; with p = 0 the inputs are untouched."""
    torch.manual_seed(0)
    tok = Tokenizer("char")
    model = GPT(GPTConfig(vocab_size=tok.n_vocab, block_size=64, n_layer=1, n_head=2, n_embd=16)).eval()
    head = LatentHead(16).eval()
    head.scale.fill_(0.5)
    ex = [(tok.encode("1+2"), tok.encode("<<1+2=3>>"), tok.encode(" 3")), (tok.encode("4"), tok.encode("<<4>>"), tok.encode(" 4"))]
    b = train_sft.make_colar_batch(tok, ex, 2)
    z, zmask, _ = compress(model.wte(b["chain"]), b["chain"], b["chain_mask"], 2)
    x = model.wte(b["idx"]).masked_scatter(b["latent_in"][..., None], z[zmask])
    assert torch.equal(train_sft.self_feed(model, head, x, b, 0.0), x)
    fed = train_sft.self_feed(model, head, x, b, 1.0)
    _, h = model(embeds=x, mask=b["mask"], return_hidden=True)
    mu, _ = head(h)
    for i in range(2):
        slots = b["slot"][i].nonzero().squeeze(1).tolist()
        ins = b["latent_in"][i].nonzero().squeeze(1).tolist()
        assert [s + 1 for s in slots] == ins
        for s_pos, in_pos in zip(slots, ins):
            torch.testing.assert_close(fed[i, in_pos], 0.5 * mu[i, s_pos])
    keep = ~b["latent_in"]
    assert torch.equal(fed[keep], x[keep])
    # the fed predictions are detached: no gradient flows back through them into the model
    model.zero_grad()
    fed[b["latent_in"]].sum().backward()
    assert all(p.grad is None or not p.grad.any() for p in list(model.parameters()) + list(head.parameters()))

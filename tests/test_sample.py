"""Tests of sample.py (batched KV-cache decoding, of tokens and of CoLaR latents, against slow references without a
cache; token picking; splitting the output) and evaluate.ci95.

Run: .venv/bin/python -m pytest tests/test_sample.py
"""
import math

import pytest
import torch
from conftest import FAKE_TOK, tiny_gpt, tiny_latent_model

from colar import prompt
from common import UserError
from evaluate import ci95
from latent_head import LatentHead
import sample
from sample import answer_questions, generate, generate_latent, left_pad, pick_tokens, split_output

V = 24


def tiny(vocab=V, block_size=40, seed=0):
    """A 2-layer GPT with large random weights, so greedy decoding does not just repeat one token."""
    return tiny_gpt(vocab, block_size, n_layer=2, n_embd=32, seed=seed, init="sharp")


def naive_greedy(model, ids, max_new, stop_id):
    """Reference: the full forward over the unpadded prompt ids + what was generated so far, argmax, repeat."""
    seq, out = list(ids), []
    with torch.no_grad():
        for _ in range(max_new):
            t = int(model(torch.tensor([seq]))[0][0, -1].argmax())
            out.append(t)
            seq.append(t)
            if t == stop_id:
                break
    return out


PROMPTS = [[3, 1, 4, 1, 5], [9], [2, 6, 5, 3, 5, 8, 9], [7, 9, 3], [23, 0]]


def test_left_pad():
    idx, mask, pos = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert idx.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[True, True, True], [False, False, True]]
    assert pos.tolist() == [[0, 1, 2], [0, 0, 0]]


def test_generate_greedy_equals_naive_reference_with_early_stops():
    m = tiny()
    max_new = 10
    free = [naive_greedy(m, p, max_new, stop_id=None) for p in PROMPTS]
    assert len({tuple(f) for f in free}) == len(PROMPTS)  # the rows really differ
    stop_id = free[0][2]  # a token row 0 emits at its third step: row 0 stops there (or earlier)
    ref = [naive_greedy(m, p, max_new, stop_id) for p in PROMPTS]
    lengths = [len(r) for r in ref]
    assert max(lengths) == max_new, lengths  # some rows run to the end ...
    assert len({n for n in lengths if n < max_new}) >= 2, lengths  # ... and rows leave the batch at different steps
    for pad_id in (0, stop_id):  # the pad id must not matter, even when it is the stop id
        out = generate(m, PROMPTS, max_new, stop_id=stop_id, pad_id=pad_id)
        assert out == ref
    for r in ref:
        assert stop_id not in r[:-1]  # a row ends at its first stop token
        assert r[-1] == stop_id or len(r) == max_new


def test_generate_without_any_stop_and_single_row():
    m = tiny(seed=1)
    ref = [naive_greedy(m, p, 6, stop_id=-1) for p in PROMPTS]
    assert generate(m, PROMPTS, 6, stop_id=-1, pad_id=0) == ref
    assert generate(m, PROMPTS[2:3], 6, stop_id=-1, pad_id=0) == ref[2:3]


def test_generate_stops_at_block_size():
    """The last new token is never fed: a prompt of 7 in a context of 10 leaves room for 4 new tokens, as a training
    row of 11 tokens (10 inputs, 10 targets) is read; one of 10 for 1 (it stopped one short, at 3 and 0)."""
    m = tiny(block_size=10)
    out = generate(m, PROMPTS, 50, stop_id=-1, pad_id=0)  # longest prompt 7
    assert [len(o) for o in out] == [4] * len(PROMPTS)
    assert out == [naive_greedy(m, p, 4, stop_id=-1) for p in PROMPTS]
    assert generate(m, [[1] * 10], 5, stop_id=-1, pad_id=0) == [naive_greedy(m, [1] * 10, 1, stop_id=-1)]
    assert generate(m, [[1] * 11], 5, stop_id=-1, pad_id=0) == [[]]


# --- pick_tokens -----------------------------------------------------------------------------------------------
def test_pick_tokens_temperature_zero_is_argmax():
    logits = torch.randn(6, 11, generator=torch.Generator().manual_seed(0))
    assert pick_tokens(logits, 0.0).tolist() == logits.argmax(-1).tolist()
    assert pick_tokens(logits, 0.0, top_p=0.5).tolist() == logits.argmax(-1).tolist()


def test_pick_tokens_small_top_p_always_argmax():
    logits = torch.randn(4, 11, generator=torch.Generator().manual_seed(1)).repeat(50, 1)  # 200 rows
    g = torch.Generator().manual_seed(0)
    got = pick_tokens(logits, temperature=1.0, top_p=0.01, generator=g)
    assert got.tolist() == logits.argmax(-1).tolist()
    # control: the full distribution does not always give the argmax
    full = pick_tokens(logits, temperature=1.0, top_p=1.0, generator=torch.Generator().manual_seed(0))
    assert (full != logits.argmax(-1)).any()


def test_pick_tokens_nucleus_hand_worked():
    # probabilities 0.5, 0.3, 0.15, 0.05: with top_p 0.7 the nucleus is {0, 1} (0.5 < 0.7 <= 0.8)
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().repeat(400, 1)
    got = pick_tokens(logits, 1.0, top_p=0.7, generator=torch.Generator().manual_seed(2))
    counts = torch.bincount(got, minlength=4).tolist()
    assert counts[2] == counts[3] == 0 and counts[0] > 0 and counts[1] > 0
    # renormalised 0.625 / 0.375: 250 of 400 expected for token 0, allow 5 standard deviations (~48)
    assert abs(counts[0] - 250) < 50


def test_pick_tokens_same_seed_same_samples():
    logits = torch.zeros(64, 10)
    a = pick_tokens(logits, 1.0, 0.9, torch.Generator().manual_seed(7))
    b = pick_tokens(logits, 1.0, 0.9, torch.Generator().manual_seed(7))
    c = pick_tokens(logits, 1.0, 0.9, torch.Generator().manual_seed(8))
    assert a.tolist() == b.tolist()
    assert a.tolist() != c.tolist()
    assert a.min() >= 0 and a.max() < 10


# --- split_output ----------------------------------------------------------------------------------------------
def test_split_output_chain_and_answer(tok):
    chain = tok.encode("<<1+2=3>>")
    ids = chain + [tok.eot] + tok.encode(" 3 ") + [tok.eos] + tok.encode("junk")
    assert split_output(tok, ids) == (chain, "3", True)


def test_split_output_answer_without_eos(tok):
    chain = tok.encode("<<1+2=3>>")
    assert split_output(tok, chain + [tok.eot] + tok.encode("3")) == (chain, "3", False)


def test_split_output_without_eot_is_unfinished(tok):
    ids = tok.encode("<<1+2=3>> <<3*")
    assert split_output(tok, ids) == (ids, "", False)
    assert split_output(tok, []) == ([], "", False)


def test_split_output_nocot(tok):
    assert split_output(tok, tok.encode("42") + [tok.eos], chain_given=True) == ([], "42", True)
    assert split_output(tok, tok.encode("42"), chain_given=True) == ([], "42", False)


# --- answer_questions ------------------------------------------------------------------------------------------
def test_answer_questions_rejects_prompt_longer_than_context(tok):
    m = tiny(vocab=tok.n_vocab, block_size=16)
    with pytest.raises(UserError) as e:
        answer_questions(m, tok, ["1+2", "1+2+3+4+5+6+7+8+9"], c=1)
    assert "context is 16" in str(e.value) and "1+2+3+4+5+6+7+8+9" in str(e.value)
    # exactly block_size tokens (question 13 + speed + "1" + bot = 16) leaves no room to answer: also refused
    with pytest.raises(UserError, match="prompt is 16 tokens"):
        answer_questions(m, tok, ["1+2+3+4+5+678"], c=1)
    # No-CoT prompts carry one more token (<|eot|>)
    with pytest.raises(UserError, match="prompt is 16 tokens"):
        answer_questions(m, tok, ["1+2+3+4+5+67"], c=0)
    # a prompt of block_size - 1 tokens (question 12 + speed + "1" + bot = 15) is accepted: room for 2 tokens
    res = answer_questions(m, tok, ["1+2+3+4+5+67"], c=1)
    assert len(res) == 1 and set(res[0]) == {"chain", "length", "answer", "finished", "hit_cap", "latents", "lm_top"}
    assert res[0]["length"] == len(res[0]["chain"]) and res[0]["hit_cap"] is False
    ids = generate(m, [prompt(tok, "1+2+3+4+5+67", 1)], 50, stop_id=-1, pad_id=tok.pad)[0]
    assert len(ids) == 2 and split_output(tok, ids)[0] == res[0]["chain"][:2]  # both decisions the context allows


def test_answer_questions_matches_generate(tok):
    m = tiny(vocab=tok.n_vocab, block_size=24, seed=3)
    qs = ["1+2", "9*9-3"]
    res = answer_questions(m, tok, qs, c=1, max_new_tokens=5)
    outs = [naive_greedy(m, prompt(tok, q, 1), 5, tok.eos) for q in qs]
    assert [split_output(tok, o) for o in outs] == [(r["chain"], r["answer"], r["finished"]) for r in res]
    # No-CoT appends <|eot|> to the prompt
    res0 = answer_questions(m, tok, qs, c=0, max_new_tokens=5, batch_size=1)
    outs0 = [naive_greedy(m, prompt(tok, q, 0) + [tok.eot], 5, tok.eos) for q in qs]
    assert [split_output(tok, o, chain_given=True) for o in outs0] == \
        [(r["chain"], r["answer"], r["finished"]) for r in res0]


# --- evaluate.ci95 ---------------------------------------------------------------------------------------------
def test_ci95():
    assert ci95([]) is None
    assert ci95([0.7]) is None
    assert ci95([0.5, 0.6, 0.7]) == pytest.approx(4.303 * 0.1 / math.sqrt(3), rel=1e-9)
    assert ci95([0.4, 0.4]) == 0.0
    assert ci95([0.0, 1.0]) == pytest.approx(12.706 * math.sqrt(0.5) / math.sqrt(2), rel=1e-9)


def test_ci95_student_t_beyond_ten_degrees_of_freedom():
    values = [0.0, 1.0] * 6  # n = 12, sd = sqrt(12 * 0.25 / 11)
    sd = math.sqrt(12 * 0.25 / 11)
    assert ci95(values) == pytest.approx(2.201 * sd / math.sqrt(12), rel=1e-3)


# --- generate_latent() against a slow reference ------------------------------------------------------------------
LATENT_PROMPTS = [[1, 2, 3, 4, 5], [6, 7], [8, 9, 10, 11], [12, 13, 14]]


@torch.no_grad()
def slow_latent_decode(model, head, prompt, eot, eos, max_latents, max_steps, fed=None):
    """Reference: one prompt, no cache: each step re-runs the whole forward over [prompt embeddings + what was fed];
    the latents fed are appended to `fed` when given."""
    x = model.wte(torch.tensor(prompt))
    n, thinking, answer, finished, hit_cap = 0, True, [], False, False
    for _ in range(max_steps):
        logits, _, h = model(embeds=x[None])
        t = int(logits[0, -1].argmax())
        if thinking:
            if t == eot or n >= max_latents:
                hit_cap, thinking = n >= max_latents and t != eot, False
                nxt = model.wte.weight[eot]
            else:
                nxt = head(h[0, -1])[0] * head.scale
                n += 1
                if fed is not None:
                    fed.append(nxt.detach())
        elif t == eos:
            finished = True
            break
        else:
            answer.append(t)
            nxt = model.wte.weight[t]
        x = torch.cat([x, nxt[None]])
    return {"n_latents": n, "answer": answer, "finished": finished, "hit_cap": hit_cap or thinking}  # (context out)


def test_generate_latent_a_row_the_context_cuts_off_hits_the_cap():
    """A cap beyond the context: the rows still thinking when it ends are cut off, flagged as by the cap. The last
    decision's input is never fed: the longest prompt of n tokens gets block_size - n + 1 decisions (one fewer before,
    so a row at the context's edge could not close its answer)."""
    model, head = tiny_latent_model(seed=3)
    out = generate_latent(model, head, FAKE_TOK, LATENT_PROMPTS, 1000, 6)
    steps = model.cfg.block_size - max(map(len, LATENT_PROMPTS)) + 1
    ref = [slow_latent_decode(model, head, p, FAKE_TOK.eot, FAKE_TOK.eos, 1000, steps) for p in LATENT_PROMPTS]
    assert [{k: o[k] for k in r} for o, r in zip(out, ref)] == ref
    assert any(o["hit_cap"] and o["n_latents"] == steps for o in out) and not all(o["hit_cap"] for o in out)


def test_generate_latent_greedy_matches_slow_reference():
    model, head = tiny_latent_model(seed=3)
    max_latents, max_answer = 4, 6
    out = generate_latent(model, head, FAKE_TOK, LATENT_PROMPTS, max_latents, max_answer)
    # every row gets the same step budget, set by the longest (padded) prompt
    steps = min(max_latents + 1 + max_answer, model.cfg.block_size - max(map(len, LATENT_PROMPTS)) + 1)
    ref = [slow_latent_decode(model, head, p, FAKE_TOK.eot, FAKE_TOK.eos, max_latents, steps) for p in LATENT_PROMPTS]
    # the case is a useful one: rows stop at different times, by <|eot|> and by the cap, some answers close
    assert len({r["n_latents"] for r in ref}) >= 3
    assert any(r["hit_cap"] for r in ref) and any(not r["hit_cap"] and r["n_latents"] > 0 for r in ref)
    assert any(r["finished"] for r in ref) and not all(r["finished"] for r in ref)
    for o, r in zip(out, ref):
        assert {k: o[k] for k in r} == r
        assert o["latents"] == [] and o["lm_top"] == []
    # deterministic
    assert generate_latent(model, head, FAKE_TOK, LATENT_PROMPTS, max_latents, max_answer) == out
    # keep_latents: one fed vector, the head's mean times the scale, per latent
    kept = generate_latent(model, head, FAKE_TOK, LATENT_PROMPTS, max_latents, max_answer, keep_latents=True)
    for p, o, k in zip(LATENT_PROMPTS, out, kept):
        fed = []
        slow_latent_decode(model, head, p, FAKE_TOK.eot, FAKE_TOK.eos, max_latents, steps, fed)
        assert len(k["latents"]) == len(k["lm_top"]) == o["n_latents"] == len(fed) and k["answer"] == o["answer"]
        if fed:
            torch.testing.assert_close(torch.stack(k["latents"]), torch.stack(fed), rtol=1e-4, atol=1e-5)
    # smaller caps; at cap 2 a row reaches the cap just as the LM head says <|eot|>: that is no hit
    coincide = 0
    for cap in (0, 1, 2):
        capped = generate_latent(model, head, FAKE_TOK, LATENT_PROMPTS, cap, max_answer)
        steps = min(cap + 1 + max_answer, model.cfg.block_size - 5 + 1)
        ref = [slow_latent_decode(model, head, p, FAKE_TOK.eot, FAKE_TOK.eos, cap, steps) for p in LATENT_PROMPTS]
        assert [{k: o[k] for k in r} for o, r in zip(capped, ref)] == ref
        assert all(o["n_latents"] <= cap for o in capped)
        coincide += sum(o["n_latents"] == cap and not o["hit_cap"] for o in capped)
    assert coincide > 0


def test_generate_latent_sampled_is_seeded():
    model, head = tiny_latent_model(seed=3)
    kw = dict(max_latents=4, max_answer_tokens=6, latent_temperature=1.0, temperature=1.0, top_p=0.9, stop="sampled",
              keep_latents=True)

    def run(seed):
        gen = torch.Generator().manual_seed(seed)
        return generate_latent(model, head, FAKE_TOK, LATENT_PROMPTS, generator=gen, **kw)

    def flat(results):
        return [(r["n_latents"], r["answer"], r["finished"], r["hit_cap"], [z.tolist() for z in r["latents"]])
                for r in results]

    a, b, other = run(0), run(0), run(1)
    assert flat(a) == flat(b)
    assert flat(a) != flat(other)
    greedy = generate_latent(model, head, FAKE_TOK, LATENT_PROMPTS, 4, 6, keep_latents=True)
    assert flat(a) != flat(greedy)


def test_answer_questions_with_head_uses_latent_decoding(tok):
    model = tiny_gpt(tok.n_vocab, block_size=40, seed=0)
    head = LatentHead(16).eval()
    head.scale.fill_(0.5)
    qs = ["1+2", "33*4-1"]
    res = answer_questions(model, tok, qs, c=2, head=head, max_latents=3, max_new_tokens=5)
    direct = generate_latent(model, head, tok, [prompt(tok, q, 2) for q in qs], 3, 5)
    for r, d in zip(res, direct):
        assert r["length"] == d["n_latents"] and r["hit_cap"] == d["hit_cap"] and r["finished"] == d["finished"]
        assert r["answer"] == tok.decode(d["answer"]).strip() and r["chain"] == []
    # c = 0 takes the No-CoT text path even with a head
    res0 = answer_questions(model, tok, qs, c=0, head=head, max_new_tokens=5)
    assert all(r["length"] == 0 and r["hit_cap"] is False for r in res0)


def test_an_answer_cut_short_is_wrong(monkeypatch):
    """score counts an answer right only when <|eos|> closed it: " 12" cut off by the step budget (of " 123"
    perhaps) is wrong even where the reference is 12; the same text closed is right."""
    def fake(model, tok, questions, *args, **kw):
        return [dict(answer="12", finished=done, length=3, hit_cap=False) for done in (False, True, True)]
    monkeypatch.setattr(sample, "answer_questions", fake)
    acc, length, _ = sample.score(None, None, [("q", [], "12"), ("q", [], "12"), ("q", [], "13")])
    assert (acc, length) == (pytest.approx(1 / 3), 3.0)


@pytest.mark.parametrize("change", ["model_config", "tokenizer"])
def test_load_model_refuses_a_checkpoint_whose_configs_do_not_fit_in_one_line(tiny_runs, tmp_path, change):
    """A model config with a key this GPTConfig lacks, or no tokenizer spec, was a TypeError / KeyError traceback."""
    ckpt = torch.load(sample.load_checkpoint(tiny_runs["cot"])["path"], weights_only=True)
    if change == "model_config":
        ckpt["model_config"]["n_experts"] = 8
    else:
        del ckpt["tokenizer"]
    torch.save(ckpt, tmp_path / "ckpt.pt")
    with pytest.raises(UserError, match=f"^checkpoint {tmp_path}/ckpt.pt cannot be rebuilt from its own model config and "):
        sample.load_model(str(tmp_path / "ckpt.pt"))

"""Tests of train_rl.py: rewards, group advantages, the clipped surrogate, length averaging (each against numbers
worked out by hand), the teacher-forced log-probs of rollouts against a slow one-rollout-at-a-time reference, the
direction of one update, and RL end to end with exact resume and a NaN stop that keeps the checkpoint.

Run: .venv/bin/python -m pytest tests
"""
import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

import evaluate
import train_rl
import train_sft
from common import UserError, load_checkpoint, load_model, read_pointer
from data import synthetic
from latent_head import LOG_SIGMA_MIN, LatentHead, gaussian_log_prob
from model import GPT, GPTConfig
from sample import generate_latent

V = 24
FAKE_TOK = SimpleNamespace(pad=23, eot=1, eos=16)  # rollout_batch and generate_latent only need these ids
PROMPTS = [[2, 3, 4, 5], [6, 7], [8, 9, 10], [12, 13, 14, 15, 17]]


# --- pure pieces, by hand --------------------------------------------------------------------------------------
def test_reward():
    assert train_rl.reward("7", "7") == 1.0
    assert train_rl.reward("1,250", "1250") == 1.0  # the evaluation's answer matching (separators stripped)
    assert train_rl.reward("8", "7") == 0.0 and train_rl.reward("", "7") == 0.0
    # the length penalty shortens correct answers' rewards only: 1 - 0.5 * 16 / 64
    assert train_rl.reward("7", "7", n_latents=16, length_penalty=0.5, max_latents=64) == 0.875
    assert train_rl.reward("8", "7", n_latents=16, length_penalty=0.5, max_latents=64) == 0.0
    assert train_rl.reward("7", "7", n_latents=16) == 1.0  # no penalty by default


def test_group_advantages_by_hand():
    rewards = torch.tensor([1., 0., 0., 1., 1., 1., 1., 1., 0., 0., 0., 1.])
    adv, signal = train_rl.group_advantages(rewards, 4)
    # group 1: mean 0.5, std 0.5 -> +-1; group 2: all equal -> 0, no signal; group 3: mean 0.25, std sqrt(3)/4
    s = math.sqrt(3) / 4
    expected = [1, -1, -1, 1, 0, 0, 0, 0, -0.25 / s, -0.25 / s, -0.25 / s, 0.75 / s]
    assert adv.tolist() == pytest.approx(expected, abs=1e-6)
    assert signal.tolist() == [True, False, True]
    adv0, signal0 = train_rl.group_advantages(torch.zeros(4), 2)
    assert adv0.tolist() == [0, 0, 0, 0] and signal0.tolist() == [False, False]
    # equal float rewards (a length penalty): the float std is not exactly 0, the group must still carry no signal
    same = torch.full((8,), 1 - 0.3 * 1 / 64)
    assert same.std(correction=0).item() > 0
    adv1, signal1 = train_rl.group_advantages(same, 8)
    assert adv1.tolist() == [0.0] * 8 and signal1.tolist() == [False]


def test_clipped_surrogate_by_hand():
    logp = torch.tensor([math.log(1.5), math.log(1.5), math.log(0.5), math.log(0.5), 0.0], requires_grad=True)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, 2.0])
    loss = train_rl.clipped_surrogate(logp, torch.zeros(5), adv, 0.2)
    # rho 1.5, A +1: min(1.5, 1.2) -> -1.2 (clipped); A -1: min(-1.5, -1.2) -> +1.5 (not clipped)
    # rho 0.5, A +1: min(0.5, 0.8) -> -0.5 (not clipped); A -1: min(-0.5, -0.8) -> +0.8 (clipped); rho 1: -A
    assert loss.tolist() == pytest.approx([-1.2, 1.5, -0.5, 0.8, -2.0])
    loss.sum().backward()
    # d/dlogp of -rho*A is -rho*A where not clipped, 0 where clipped
    assert logp.grad.tolist() == pytest.approx([0.0, 1.5, -0.5, 0.0, -2.0])
    # an enormous log-ratio stays finite
    huge = train_rl.clipped_surrogate(torch.tensor([1e4]), torch.tensor([0.0]), torch.tensor([-1.0]), 0.2)
    assert torch.isfinite(huge).all() and huge.item() == pytest.approx(math.exp(train_rl.LOG_RATIO_MAX), rel=1e-5)


def test_aggregate_length_average_by_hand():
    # rollout 0: latents at 1, 2 (losses 1, 3), answer actions at 3, 4 (losses 10, 20)
    # rollout 1: latents at 0..3 (losses 2, 2, 2, 6), one answer action at 4 (loss 5)
    per = torch.tensor([[9., 1., 3., 10., 20.], [2., 2., 2., 6., 5.]])
    lat = torch.tensor([[0, 1, 1, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    tok = torch.tensor([[0, 0, 0, 1, 1], [0, 0, 0, 0, 1]], dtype=torch.bool)
    # averaged per rollout: (2 + 15) and (3 + 5), then the mean of the two
    assert train_rl.aggregate(per, lat, tok, True).item() == pytest.approx((17 + 8) / 2)
    # w/o average: each rollout's sum over its actions, then the mean over rollouts
    summed = ((1 + 3 + 10 + 20) + (2 + 2 + 2 + 6 + 5)) / 2
    assert train_rl.aggregate(per, lat, tok, False).item() == pytest.approx(summed)
    # a rollout without latents (stopped at once) contributes its answer mean only
    lat0 = torch.zeros_like(lat)
    assert train_rl.aggregate(per, lat0, tok, True).item() == pytest.approx((15 + 5) / 2)


def test_gaussian_log_prob_is_the_normal_density_averaged_over_dims():
    g = torch.Generator().manual_seed(0)
    z, mu = torch.randn(3, 7, generator=g), torch.randn(3, 7, generator=g)
    log_sigma = torch.randn(3, 7, generator=g) * 0.5
    ref = torch.distributions.Normal(mu, log_sigma.exp()).log_prob(z).mean(-1)
    assert torch.allclose(gaussian_log_prob(z, mu, log_sigma), ref, atol=1e-6)


def test_latent_head_sigma_floor():
    torch.manual_seed(0)
    free, floored = LatentHead(8), LatentHead(8, sigma_min=0.5)
    floored.load_state_dict(free.state_dict())
    with torch.no_grad():
        free.log_sigma.bias.fill_(-3.0)  # sigma ~ 0.05, below the floor
        floored.log_sigma.bias.fill_(-3.0)
    h = torch.randn(5, 8)
    mu_a, ls_a = free(h)
    mu_b, ls_b = floored(h)
    assert torch.equal(mu_a, mu_b)
    assert torch.allclose(ls_b, ls_a.clamp(min=math.log(0.5))) and ls_b.min().item() == pytest.approx(math.log(0.5))
    assert (ls_a < math.log(0.5)).all()  # the case tests the floor


# --- rollouts: layout and log-probs against a slow reference ---------------------------------------------------
def latent_model(seed=1):
    """A tiny random GPT with large weights (decoding varies) and a latent head of scale 1, in float64. The <|eot|>
    row is doubled so that sampled rows stop after different numbers of latents, not only at the cap."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=V, block_size=48, n_layer=1, n_head=2, n_embd=16))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, p.size(-1) ** -0.5)
        model.wte.weight[FAKE_TOK.eot] *= 2
    head = LatentHead(16, sigma_min=0.3)
    head.update_scale(torch.ones(1, 1, 16), torch.ones(1, 1, dtype=torch.bool))
    return model.double().eval(), head.double().eval()


def sampled_rollouts(model, head, seed=0, max_latents=3):
    prompts = PROMPTS * 3
    outs = generate_latent(model, head, FAKE_TOK, prompts, max_latents, 5, latent_temperature=1.0, temperature=1.0,
                           top_p=1.0, stop="sampled", generator=torch.Generator().manual_seed(seed), keep_latents=True)
    return prompts, outs


@torch.no_grad()
def slow_log_probs(model, head, prompt, r, go_on=False):
    """Reference, one rollout without padding: the embeddings of prompt | latents | <|eot|> answer, one forward pass,
    then the log-density of each latent where it was made (plus, with go_on, log(1 - p(<|eot|>)) there) and the
    log-prob of each answer action."""
    ans = r["answer"] + ([FAKE_TOK.eos] if r["finished"] else [])
    x = torch.cat([model.wte(torch.tensor(prompt))] + [z[None] for z in r["latents"]]
                  + [model.wte(torch.tensor([FAKE_TOK.eot] + ans))])
    logits, h = model(embeds=x[None], return_hidden=True)
    P, L = len(prompt), r["n_latents"]
    logprobs = torch.log_softmax(logits[0], -1)
    lat = []
    for k in range(L):
        mu, log_sigma = head(h[0, P - 1 + k])
        normal = torch.distributions.Normal(mu, log_sigma.exp())
        go = math.log(1 - logprobs[P - 1 + k, FAKE_TOK.eot].exp().item()) if go_on else 0.0
        lat.append(normal.log_prob(r["latents"][k] / head.scale).mean().item() + go)
    actions = ([] if r["hit_cap"] else [(P + L - 1, FAKE_TOK.eot)]) + [(P + L + j, t) for j, t in enumerate(ans)]
    return lat, [logprobs[pos, t].item() for pos, t in actions]


@pytest.mark.parametrize("go_on", [False, True])
def test_action_log_probs_match_slow_reference(go_on):
    model, head = latent_model()
    prompts, outs = sampled_rollouts(model, head)
    # a useful case: rows stop by <|eot|> at different lengths, some hit the cap, some close their answer
    assert len({o["n_latents"] for o in outs}) >= 3
    assert any(o["hit_cap"] for o in outs) and not all(o["hit_cap"] for o in outs)
    assert any(o["finished"] for o in outs) and any(o["answer"] for o in outs)
    b = train_rl.rollout_batch(FAKE_TOK, prompts, outs, "cpu")
    logp, sigma = train_rl.action_log_probs(model, head, b, FAKE_TOK.eot if go_on else None)
    assert sigma.item() >= 0.3 - 1e-9  # the floor
    for i, (p, r) in enumerate(zip(prompts, outs)):
        lat, toks = slow_log_probs(model, head, p, r, go_on)
        assert int(b["lat_at"][i].sum()) == r["n_latents"] == len(lat)
        assert logp[i][b["lat_at"][i]].tolist() == pytest.approx(lat, abs=1e-9)
        assert logp[i][b["tok_at"][i]].tolist() == pytest.approx(toks, abs=1e-9)
        closing = r["answer"] + [FAKE_TOK.eos] if r["finished"] else r["answer"]
        assert b["tok_target"][i][b["tok_at"][i]].tolist() == ([] if r["hit_cap"] else [FAKE_TOK.eot]) + closing
    assert not (b["lat_at"] & b["tok_at"]).any()


def test_greedy_rollout_latents_are_the_head_means():
    """With latent temperature 0 each fed latent is mu * scale: its log-density is the density's peak."""
    model, head = latent_model()
    outs = generate_latent(model, head, FAKE_TOK, PROMPTS, 3, 5, keep_latents=True)
    b = train_rl.rollout_batch(FAKE_TOK, PROMPTS, outs, "cpu")
    assert b["lat_at"].any()
    logp, _ = train_rl.action_log_probs(model, head, b)
    x = torch.where(b["latent_in"][..., None], b["lat_x"], model.wte(b["idx"]))
    _, h = model(embeds=x, mask=b["mask"], return_hidden=True)
    _, log_sigma = head(h[b["lat_at"]])
    peak = -log_sigma.mean(-1) - 0.5 * math.log(2 * math.pi)
    assert torch.allclose(logp[b["lat_at"]], peak, atol=1e-9)


@pytest.mark.parametrize("sign,go_on_id", [(1.0, None), (-1.0, None), (1.0, FAKE_TOK.eot)])
def test_rl_step_moves_log_prob_with_the_advantage(sign, go_on_id):
    model, head = latent_model()
    prompts, outs = sampled_rollouts(model, head, seed=1)
    i = next(k for k, o in enumerate(outs) if o["n_latents"] >= 2 and not o["hit_cap"])
    b = train_rl.rollout_batch(FAKE_TOK, [prompts[i]], [outs[i]], "cpu")

    def objective():  # what the update should raise (A > 0) or lower (A < 0): mean latent + mean answer log-prob
        with torch.no_grad():
            logp, _ = train_rl.action_log_probs(model, head, b, go_on_id)
        return (logp[b["lat_at"]].mean() + logp[b["tok_at"]].mean()).item()

    before = objective()
    params = list(model.parameters()) + list(head.parameters())
    optimizer = torch.optim.SGD(params, lr=1e-3)
    cfg = SimpleNamespace(epochs=1, minibatch=8, clip_eps=0.2, length_average=True, grad_clip=0.0)
    loss, norm, _ = train_rl.rl_step(model, head, optimizer, params, b, torch.tensor([sign]),
                                     cfg, torch.Generator().manual_seed(0), go_on_id)
    after = objective()
    assert norm.item() > 0 and loss.item() == pytest.approx(-2 * sign)  # rho = 1: loss = -A (1 + 1)
    assert (after - before) * sign > 0


# --- end to end -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rl_setup(tmp_path_factory):
    """Tiny data, a tiny CoT run and a CoLaR run from it (c = 1, 2): the starting point of RL."""
    root = tmp_path_factory.mktemp("rl")
    data = str(root / "synth")
    synthetic.main(synthetic.SynthConfig(out=data, n_train=128, n_val=8, n_test=8, steps_min=2, steps_max=3))
    base = dict(data_dir=data, n_layer=1, n_head=2, n_embd=32, batch_size=16, warmup_steps=2, eval_n=4, log_every=4,
                device="cpu")
    cot = str(root / "cot")
    train_sft.main(train_sft.TrainConfig(out_dir=cot, max_steps=4, eval_every=4, **base))
    colar = str(root / "colar")
    train_sft.main(train_sft.TrainConfig(out_dir=colar, mode="colar", init_from=cot, c_values="1,2", max_latents=4,
                                         max_steps=8, eval_every=8, **base))
    return {"data": data, "cot": cot, "colar": colar, "root": root}


def rl_cfg(setup, out, **kw):
    base = dict(init_from=setup["colar"], data_dir=setup["data"], out_dir=str(setup["root"] / out), c=2, group=4,
                questions=8, minibatch=8, max_latents=4, max_answer_tokens=4, lr=1e-3, max_steps=4, eval_every=2,
                eval_n=4, log_every=1, device="cpu")
    base.update(kw)
    return train_rl.RLConfig(**base)


def test_train_rl_end_to_end_and_exact_resume(rl_setup, capsys, monkeypatch):
    # the tiny model never answers right; a reward on the answer's length (still a pure function of strings) gives
    # groups with mixed rewards, so the updates run
    monkeypatch.setattr(train_rl, "reward", lambda answer, reference, *args: float(len(answer) % 2 == 0))
    straight = train_rl.main(rl_cfg(rl_setup, "straight"))
    log = capsys.readouterr().out
    assert "eval step 4" in log and "groups with signal 0.00" not in log
    start = load_checkpoint(rl_setup["colar"])
    sd = straight["model"].state_dict()
    assert any(not torch.equal(start["model"][k], sd[k]) for k in sd)  # RL moved the weights
    ckpt = load_checkpoint(rl_cfg(rl_setup, "straight").out_dir, "latest")
    assert ckpt["step"] == 4 and ckpt["rl_config"]["c"] == 2 and ckpt["config"]["mode"] == "colar"
    assert ckpt["latent_config"]["sigma_min"] == 0.1
    model, head, _, _ = load_model(ckpt["path"])
    assert head.log_sigma_min == pytest.approx(math.log(0.1))  # sampled evaluation draws from the RL policy
    # stop at step 2, resume: the same weights as the straight run
    train_rl.main(rl_cfg(rl_setup, "resumed", stop_at=2))
    resumed = train_rl.main(rl_cfg(rl_setup, "resumed", resume=True))
    for a, b in ((straight["model"], resumed["model"]), (straight["head"], resumed["head"])):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    recs = evaluate.main(evaluate.EvalConfig(ckpt=ckpt["path"], split="test", n=4, c="2", decode="greedy",
                                             max_latents=4, device="cpu"))
    assert recs[0]["method"] == "colar_rl"


def test_train_rl_nan_stops_and_keeps_the_checkpoint(rl_setup, monkeypatch):
    cfg = rl_cfg(rl_setup, "nan", max_steps=6, stop_at=2)
    train_rl.main(cfg)
    kept = read_pointer(cfg.out_dir, "latest")
    real = train_rl.group_advantages
    monkeypatch.setattr(train_rl, "group_advantages",  # every group has signal, so the loss is computed
                        lambda r, g: (real(r, g)[0], torch.ones(r.numel() // g, dtype=torch.bool)))
    monkeypatch.setattr(train_rl, "aggregate", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(UserError, match=r"became nan at step 3.*ckpt_000002.pt is kept"):
        train_rl.main(replace(cfg, stop_at=0, resume=True))
    assert read_pointer(cfg.out_dir, "latest") == kept
    assert load_checkpoint(cfg.out_dir, "latest")["step"] == 2


def test_train_rl_bad_input(rl_setup):
    with pytest.raises(UserError, match="--group must be at least 2"):
        train_rl.main(rl_cfg(rl_setup, "bad", group=1))
    with pytest.raises(UserError, match="exceeds the model's context"):  # no rollout may be cut short
        train_rl.main(rl_cfg(rl_setup, "bad", max_latents=200))
    with pytest.raises(UserError, match="--stop_actions must be"):
        train_rl.main(rl_cfg(rl_setup, "bad", stop_actions="some"))
    with pytest.raises(UserError, match="length_penalty"):
        train_rl.main(rl_cfg(rl_setup, "bad", length_penalty=2.0))
    with pytest.raises(UserError, match="no latent head"):
        train_rl.main(rl_cfg(rl_setup, "bad", init_from=rl_setup["cot"]))
    with pytest.raises(UserError, match="not found"):
        train_rl.main(rl_cfg(rl_setup, "bad", init_from=str(rl_setup["root"] / "missing")))
    train_rl.main(rl_cfg(rl_setup, "mismatch", max_steps=1, eval_every=1))
    with pytest.raises(UserError, match="--c=1 does not match"):
        train_rl.main(rl_cfg(rl_setup, "mismatch", c=1, resume=True))
    with pytest.raises(UserError, match="already holds checkpoints"):
        train_rl.main(rl_cfg(rl_setup, "mismatch"))


def test_evaluate_sigma_min_overrides_the_heads_floor(rl_setup, monkeypatch):
    floors = []
    real = evaluate.evaluate

    def spy(*args, **kw):
        floors.append(kw["head"].log_sigma_min)  # the head evaluate.main passes on
        return real(*args, **kw)

    monkeypatch.setattr(evaluate, "evaluate", spy)
    for sigma_min in (-1.0, 0.25):
        evaluate.main(evaluate.EvalConfig(ckpt=rl_setup["colar"], split="test", n=2, c="1", decode="greedy",
                                          max_latents=2, sigma_min=sigma_min, device="cpu"))
    assert floors == [LOG_SIGMA_MIN, pytest.approx(math.log(0.25))]  # the SFT head has none; the flag sets one


def test_train_rl_step_without_signal_changes_nothing(rl_setup, capsys, monkeypatch):
    monkeypatch.setattr(train_rl, "reward", lambda *args: 0.0)  # every group all wrong: no signal anywhere
    run = train_rl.main(rl_cfg(rl_setup, "nosignal", max_steps=2))
    start = load_checkpoint(rl_setup["colar"])
    sd = run["model"].state_dict()
    assert all(torch.equal(start["model"][k], sd[k]) for k in sd)
    assert "groups with signal 0.00" in capsys.readouterr().out

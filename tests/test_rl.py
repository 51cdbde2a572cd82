"""Tests of train_rl.py: rewards, group advantages, the clipped surrogate, length averaging (each against numbers
worked out by hand), the replay layout of hand-made rollouts, the teacher-forced log-probs of sampled rollouts against
a slow one-rollout-at-a-time reference, the direction of one update, and RL end to end with exact resume and a NaN
stop that keeps the checkpoint.

Run: .venv/bin/python -m pytest tests/test_rl.py
"""
import math
import re
import time
from dataclasses import replace
from functools import partial
from types import SimpleNamespace

import pytest
import torch

import colar
import evaluate
import train_rl
from checkpoint import file_sha256, load_checkpoint, read_pointer
from common import Trainee, UserError
from conftest import tiny_latent_model
from latent_head import LOG_SIGMA_MIN, LatentHead, gaussian_log_prob
from sample import generate_latent, load_model


class DigitTok:
    """A 24-token stand-in for the tokenizer: digits are ids 2..11, and the special tokens replay_batch,
    colar.layout and generate_latent use."""
    eot, eos, speed, bot, pad = 1, 16, 21, 22, 23

    @staticmethod
    def encode(text):
        return [2 + int(ch) for ch in text]

    @staticmethod
    def decode(ids):
        return "".join(str(i - 2) for i in ids if 2 <= i <= 11)


TOK, C = DigitTok(), 2
QUESTIONS = ["2345", "67", "890", "12345"]


# --- pure pieces, by hand --------------------------------------------------------------------------------------
def test_reward():
    assert train_rl.reward("7", "7") == 1.0
    assert train_rl.reward("1,250", "1250") == 1.0  # the evaluation's answer matching (separators stripped)
    assert train_rl.reward("8", "7") == 0.0 and train_rl.reward("", "7") == 0.0
    # the length penalty shortens correct answers' rewards only: 1 - 0.5 * 16 / 64
    assert train_rl.reward("7", "7", n_latents=16, length_penalty=0.5, max_latents=64) == 0.875
    assert train_rl.reward("8", "7", n_latents=16, length_penalty=0.5, max_latents=64) == 0.0
    assert train_rl.reward("7", "7", n_latents=16) == 1.0  # no penalty by default
    assert train_rl.reward("7", "7", finished=False) == 0.0  # cut short by the budget: " 7" of " 71" perhaps


def test_group_advantages_by_hand():
    rewards = torch.tensor([1., 0., 0., 1., 1., 1., 1., 1., 0., 0., 0., 1.])
    adv, signal = colar.group_advantages(rewards, 4)
    # group 1: mean 0.5, std 0.5 -> +-1; group 2: all equal -> 0, no signal; group 3: mean 0.25, std sqrt(3)/4
    s = math.sqrt(3) / 4
    expected = [1, -1, -1, 1, 0, 0, 0, 0, -0.25 / s, -0.25 / s, -0.25 / s, 0.75 / s]
    assert adv.tolist() == pytest.approx(expected, abs=1e-6)
    assert signal.tolist() == [True, False, True]
    adv0, signal0 = colar.group_advantages(torch.zeros(4), 2)
    assert adv0.tolist() == [0, 0, 0, 0] and signal0.tolist() == [False, False]
    # equal float rewards (a length penalty): the float std is not exactly 0, the group must still carry no signal
    same = torch.full((8,), 1 - 0.3 * 1 / 64)
    assert same.std(correction=0).item() > 0
    adv1, signal1 = colar.group_advantages(same, 8)
    assert adv1.tolist() == [0.0] * 8 and signal1.tolist() == [False]


def test_clipped_surrogate_by_hand():
    logp = torch.tensor([math.log(1.5), math.log(1.5), math.log(0.5), math.log(0.5), 0.0], requires_grad=True)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, 2.0])
    loss = colar.clipped_surrogate(logp, torch.zeros(5), adv, 0.2)
    # rho 1.5, A +1: min(1.5, 1.2) -> -1.2 (clipped); A -1: min(-1.5, -1.2) -> +1.5 (not clipped)
    # rho 0.5, A +1: min(0.5, 0.8) -> -0.5 (not clipped); A -1: min(-0.5, -0.8) -> +0.8 (clipped); rho 1: -A
    assert loss.tolist() == pytest.approx([-1.2, 1.5, -0.5, 0.8, -2.0])
    loss.sum().backward()
    # d/dlogp of -rho*A is -rho*A where not clipped, 0 where clipped
    assert logp.grad.tolist() == pytest.approx([0.0, 1.5, -0.5, 0.0, -2.0])
    # an enormous log-ratio stays finite
    huge = colar.clipped_surrogate(torch.tensor([1e4]), torch.tensor([0.0]), torch.tensor([-1.0]), 0.2)
    assert torch.isfinite(huge).all() and huge.item() == pytest.approx(math.exp(colar.LOG_RATIO_MAX), rel=1e-5)


def test_aggregate_length_average_by_hand():
    # rollout 0: latents at 1, 2 (losses 1, 3), answer actions at 3, 4 (losses 10, 20)
    # rollout 1: latents at 0..3 (losses 2, 2, 2, 6), one answer action at 4 (loss 5)
    per = torch.tensor([[9., 1., 3., 10., 20.], [2., 2., 2., 6., 5.]])
    lat = torch.tensor([[0, 1, 1, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    tok = torch.tensor([[0, 0, 0, 1, 1], [0, 0, 0, 0, 1]], dtype=torch.bool)
    # averaged per rollout: (2 + 15) and (3 + 5), then the mean of the two
    assert colar.aggregate(per, lat, tok, True).item() == pytest.approx((17 + 8) / 2)
    # w/o average: each rollout's sum over its actions, then the mean over rollouts
    summed = ((1 + 3 + 10 + 20) + (2 + 2 + 2 + 6 + 5)) / 2
    assert colar.aggregate(per, lat, tok, False).item() == pytest.approx(summed)
    # a rollout without latents (stopped at once) contributes its answer mean only
    lat0 = torch.zeros_like(lat)
    assert colar.aggregate(per, lat0, tok, True).item() == pytest.approx((15 + 5) / 2)


def test_rollout_seed_gives_every_process_and_step_its_own_stream():
    seeds = [train_rl.rollout_seed(1337, step, rank) for step in range(50) for rank in range(8)]
    assert len(set(seeds)) == len(seeds) and all(0 <= s < 2**63 for s in seeds)
    torch.Generator().manual_seed(train_rl.rollout_seed(2**62, 10**6, 63))  # large values stay within manual_seed


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
    # the floor is a clamp: below it RL's policy has sigma = the floor and learns only the mean (train_rl.py says so)
    z = torch.randn(5, 8)
    gaussian_log_prob(z, mu_b, ls_b).sum().backward()
    assert floored.log_sigma.weight.grad.abs().max().item() == 0.0 and floored.mu.weight.grad.abs().max().item() > 0
    gaussian_log_prob(z, *free(h)).sum().backward()  # the control: without the floor sigma learns
    assert free.log_sigma.weight.grad.abs().max().item() > 0


def test_validation_gives_the_answer_the_rollouts_budget(monkeypatch):
    """RL's validation decodes with the rollouts' step budget: max_latents latents, then max_answer_tokens answer
    tokens (not max_latents + 1 + max_answer_tokens of them)."""
    budgets = []
    def fake(model, head, tok, prompts, max_latents, max_answer_tokens, *args, **kw):
        budgets.append((max_latents, max_answer_tokens))
        return [dict(n_latents=1, answer=[], finished=True, hit_cap=False, latents=[], lm_top=[]) for _ in prompts]
    monkeypatch.setattr("sample.generate_latent", fake)
    model, head = tiny_latent_model()
    cfg = train_rl.RLConfig(c=2, max_latents=7, max_answer_tokens=3)
    train_rl.validate(model, head, TOK, [("12", [], "3")], cfg, step=0)
    assert budgets == [(7, 3), (7, 3)]  # sampled, then greedy


# --- replay: the layout of rollouts, and their log-probs against a slow reference ------------------------------
def test_replay_batch_keeps_exactly_the_answer_actions():
    """Hand-made rollouts at c = 2: the targets hold the <|eot|> decision unless the latent cap forced it, every
    answer token (the pad id too) and <|eos|> only when the answer was closed; the latents sit in their slots."""
    z = [torch.full((3,), float(k)) for k in range(1, 7)]  # (C,) = (3,) latents, told apart by value
    outs = [dict(n_latents=2, latents=z[0:2], answer=[3, 4], finished=True, hit_cap=False),  # stopped, closed
            dict(n_latents=3, latents=z[2:5], answer=[5], finished=False, hit_cap=True),  # cap, never closed
            dict(n_latents=0, latents=[], answer=[], finished=True, hit_cap=False),  # <|eot|> at once, empty answer
            dict(n_latents=1, latents=z[5:6], answer=[6, TOK.pad], finished=True, hit_cap=True)]  # cap, closed
    questions = ["23", "4", "567", "8"]  # prompts of 5, 4, 6 and 4 ids: [q] <|speed|> '2' <|bot|>
    b, lat = colar.replay_batch(TOK, questions, outs, C, "cpu")
    _ = -1
    # inputs: prompt | a slot per latent | <|eot|> | answer, then padding (23: <|pad|>, 1: <|eot|>); the last token
    # is never an input, so T = 10
    assert b.idx.tolist() == [[4, 5, 21, 4, 22, 23, 23, 1, 3, 4],
                              [6, 21, 4, 22, 23, 23, 23, 1, 23, 23],
                              [7, 8, 9, 21, 4, 22, 1, 23, 23, 23],
                              [10, 21, 4, 22, 23, 1, 6, 23, 23, 23]]
    assert b.mask.sum(1).tolist() == [10, 8, 7, 8]  # by length: row 3's answer pad at 7 is real
    assert b.targets.tolist() == [[_, _, _, _, _, _, TOK.eot, 3, 4, TOK.eos],
                                  [_, _, _, _, _, _, _, 5, _, _],  # no <|eot|> (forced), no <|eos|>
                                  [_, _, _, _, _, TOK.eot, TOK.eos, _, _, _],
                                  [_, _, _, _, _, 6, TOK.pad, TOK.eos, _, _]]  # no <|eot|> (forced)
    assert b.latent_out.nonzero().tolist() == [[0, 4], [0, 5], [1, 3], [1, 4], [1, 5], [3, 3]]
    assert b.latent_in.nonzero().tolist() == [[0, 5], [0, 6], [1, 4], [1, 5], [1, 6], [3, 4]]
    assert b.eot_at.tolist() == [6, 6, 5, 4]
    assert lat.shape == (4, 10, 3) and torch.equal(lat[b.latent_in], torch.stack(z))
    assert not lat[~b.latent_in].any()
    assert colar.replay_batch(TOK, [], [], C, "cpu") == (None, None)


def latent_model(seed=1):
    """conftest's sharp float64 GPT (vocabulary 24) and a latent head of scale 1 with sigma floored at 0.3. The
    <|eot|> row is doubled so that sampled rows stop after different numbers of latents, not only at the cap."""
    model, head = tiny_latent_model(seed=seed, sigma_min=0.3)
    with torch.no_grad():
        model.wte.weight[TOK.eot] *= 2
    return model, head


def sampled_rollouts(model, head, seed=0, max_latents=3):
    questions = QUESTIONS * 3
    prompts = [colar.prompt(TOK, q, C) for q in questions]
    outs = generate_latent(model, head, TOK, prompts, max_latents, 5, latent_temperature=1.0, temperature=1.0,
                           top_p=1.0, stop="sampled", generator=torch.Generator().manual_seed(seed), keep_latents=True)
    return questions, prompts, outs


@torch.no_grad()
def slow_log_probs(model, head, prompt, r, go_on=False):
    """Reference, one rollout without padding: the embeddings of prompt | latents | <|eot|> answer, one forward pass,
    then the log-density of each latent where it was made (plus, with go_on, log(1 - p(<|eot|>)) there), the
    log-prob of each answer action and the answer actions' tokens."""
    ans = r["answer"] + ([TOK.eos] if r["finished"] else [])
    x = torch.cat([model.wte(torch.tensor(prompt))] + [z[None] for z in r["latents"]]
                  + [model.wte(torch.tensor([TOK.eot] + ans))])
    logits, _, h = model(embeds=x[None])
    P, L = len(prompt), r["n_latents"]
    logprobs = torch.log_softmax(logits[0], -1)
    lat = []
    for k in range(L):
        mu, log_sigma = head(h[0, P - 1 + k])
        normal = torch.distributions.Normal(mu, log_sigma.exp())
        go = math.log(1 - logprobs[P - 1 + k, TOK.eot].exp().item()) if go_on else 0.0
        lat.append(normal.log_prob(r["latents"][k] / head.scale).mean().item() + go)
    actions = ([] if r["hit_cap"] else [(P + L - 1, TOK.eot)]) + [(P + L + j, t) for j, t in enumerate(ans)]
    return lat, [logprobs[pos, t].item() for pos, t in actions], [t for _, t in actions]


@pytest.mark.parametrize("go_on", [False, True])
def test_action_log_probs_match_slow_reference(go_on):
    model, head = latent_model()
    questions, prompts, outs = sampled_rollouts(model, head)
    # a useful case: rows stop by <|eot|> at different lengths, some hit the cap, some close their answer
    assert len({o["n_latents"] for o in outs}) >= 3
    assert any(o["hit_cap"] for o in outs) and not all(o["hit_cap"] for o in outs)
    assert any(o["finished"] for o in outs) and any(o["answer"] for o in outs)
    b, lat = colar.replay_batch(TOK, questions, outs, C, "cpu")
    logp, sigma = colar.action_log_probs(model, head, b, lat, TOK.eot if go_on else None)
    assert sigma.item() >= 0.3 - 1e-9  # the floor
    acts = b.targets != -1
    for i, (p, r) in enumerate(zip(prompts, outs)):
        lats, toks, targets = slow_log_probs(model, head, p, r, go_on)
        assert int(b.latent_out[i].sum()) == r["n_latents"] == len(lats)
        assert logp[i][b.latent_out[i]].tolist() == pytest.approx(lats, abs=1e-9)
        assert logp[i][acts[i]].tolist() == pytest.approx(toks, abs=1e-9)
        assert b.targets[i][acts[i]].tolist() == targets
        assert not logp[i][~(acts[i] | b.latent_out[i])].any()  # 0 where there is no action
    assert not (b.latent_out & acts).any()


def test_greedy_rollout_latents_are_the_head_means():
    """With latent temperature 0 each fed latent is mu * scale: its log-density is the density's peak."""
    model, head = latent_model()
    prompts = [colar.prompt(TOK, q, C) for q in QUESTIONS]
    outs = generate_latent(model, head, TOK, prompts, 3, 5, keep_latents=True)
    b, lat = colar.replay_batch(TOK, QUESTIONS, outs, C, "cpu")
    assert b.latent_out.any()
    logp, _ = colar.action_log_probs(model, head, b, lat)
    x = torch.where(b.latent_in[..., None], lat, model.wte(b.idx))
    _, _, h = model(embeds=x, mask=b.mask)
    _, log_sigma = head(h[b.latent_out])
    peak = -log_sigma.mean(-1) - 0.5 * math.log(2 * math.pi)
    assert torch.allclose(logp[b.latent_out], peak, atol=1e-9)


@pytest.mark.parametrize("sign,stop_id", [(1.0, None), (-1.0, None), (1.0, TOK.eot)])
def test_rl_step_moves_log_prob_with_the_advantage(sign, stop_id):
    model, head = latent_model()
    questions, _, outs = sampled_rollouts(model, head, seed=1)
    i = next(k for k, o in enumerate(outs) if o["n_latents"] >= 2 and not o["hit_cap"])
    b, lat = colar.replay_batch(TOK, [questions[i]], [outs[i]], C, "cpu")

    def objective():  # what the update should raise (A > 0) or lower (A < 0): mean latent + mean answer log-prob
        with torch.no_grad():
            logp, _ = colar.action_log_probs(model, head, b, lat, stop_id)
        return (logp[b.latent_out].mean() + logp[b.targets != -1].mean()).item()

    before = objective()
    params = list(model.parameters()) + list(head.parameters())
    optimizer = torch.optim.SGD(params, lr=1e-3)
    cfg = SimpleNamespace(epochs=1, minibatch=8, clip_eps=0.2, length_average=True, grad_clip=0.0)
    trainee = Trainee(model, head, partial(colar.rl_loss, cfg=cfg, stop_id=stop_id))
    loss, norm, sigma = train_rl.rl_step(trainee, model, head, optimizer, params, b, lat, torch.tensor([sign]), cfg,
                                         torch.Generator().manual_seed(0), stop_id)
    after = objective()
    assert norm > 0 and sigma >= 0.3 - 1e-9 and loss == pytest.approx(-2 * sign)  # rho = 1: loss = -A (1 + 1)
    assert (after - before) * sign > 0


# --- end to end -------------------------------------------------------------------------------------------------
def rl_cfg(runs, out_dir, **kw):
    """RL at c = 2 from tiny_runs' CoLaR run (trained on c = 1, 2): 8 questions x 4 rollouts, 4 steps."""
    base = dict(init_from=runs["colar"], data_dir=runs["data"], out_dir=str(out_dir), c=2, group=4, questions=8,
                minibatch=8, max_latents=4, max_answer_tokens=4, lr=1e-3, max_steps=4, eval_every=2, eval_n=4,
                log_every=1, device="cpu")
    base.update(kw)
    return train_rl.RLConfig(**base)


def parity_reward(answer, reference, *args):
    """The tiny model never answers right; a reward on the answer's length (still a pure function of strings) gives
    groups with mixed rewards, so the updates run."""
    return float(len(answer) % 2 == 0)


def test_train_rl_end_to_end_and_exact_resume(tiny_runs, tmp_path, capsys, monkeypatch):
    """RL moves the weights, saves what evaluation needs, and a run stopped and resumed ends with the straight run's
    weights and counts the seconds of both its processes."""
    monkeypatch.setattr(train_rl, "reward", parity_reward)
    straight = train_rl.main(rl_cfg(tiny_runs, tmp_path / "straight"))
    log = capsys.readouterr().out
    assert "eval step 4" in log and "groups with signal 0.00" not in log
    start = load_checkpoint(tiny_runs["colar"])
    sd = straight["model"].state_dict()
    assert any(not torch.equal(start["model"][k], sd[k]) for k in sd)  # RL moved the weights
    ckpt = load_checkpoint(rl_cfg(tiny_runs, tmp_path / "straight").out_dir, "latest")
    assert ckpt["step"] == 4 and ckpt["rl_config"]["c"] == 2 and ckpt["config"]["mode"] == "colar"
    assert ckpt["latent_config"]["sigma_min"] == 0.1
    model, head, _, _ = load_model(ckpt["path"])
    assert head.log_sigma_min == pytest.approx(math.log(0.1))  # sampled evaluation draws from the RL policy
    # stop at step 2, resume: the same weights as the straight run; the run's seconds over both processes (the
    # first one's clock running 100 s per reading)
    readings = iter(range(0, 10 ** 9, 100))
    monkeypatch.setattr(train_rl, "time", SimpleNamespace(time=lambda: float(next(readings))))
    train_rl.main(rl_cfg(tiny_runs, tmp_path / "resumed", stop_at=2))
    first = load_checkpoint(str(tmp_path / "resumed"), "latest")["seconds"]
    monkeypatch.setattr(train_rl, "time", time)
    resumed = train_rl.main(rl_cfg(tiny_runs, tmp_path / "resumed", resume=True))
    last = load_checkpoint(str(tmp_path / "resumed"), "latest")["seconds"]
    assert first >= 300 and first < last < first + 60
    told = re.search(r"\((\d+\.\d) with the processes it resumed\)", capsys.readouterr().out)
    assert told and abs(float(told[1]) - last / 60) < 0.1
    for a, b in ((straight["model"], resumed["model"]), (straight["head"], resumed["head"])):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # what the run started from (the CoLaR run's best), recorded at the start and kept through the resume
    began = load_checkpoint(str(tmp_path / "resumed"), "latest")["started_from"]
    assert began == {"path": start["path"], "step": start["step"], "sha256": file_sha256(start["path"])}
    recs = evaluate.main(evaluate.EvalConfig(ckpt=ckpt["path"], split="test", n=4, c="2", decode="greedy",
                                             max_latents=4, device="cpu"))
    assert recs[0]["method"] == "colar_rl"


def test_train_rl_best_by_sampled_accuracy_then_greedy_then_later_across_a_resume(tiny_runs, tmp_path, monkeypatch):
    """`best` moves to a checkpoint that validates better sampled, or as well sampled and at least as well greedy; the
    greedy figure it must match survives a resume."""
    scripted = {0: (0.5, 0.8), 2: (0.5, 0.6), 4: (0.5, 0.7), 6: (0.6, 0.1)}  # step: (sampled, greedy)
    monkeypatch.setattr(train_rl, "validate", lambda m, h, t, v, cfg, step: (*scripted[step], f"eval {step}"))
    cfg = rl_cfg(tiny_runs, tmp_path / "best", max_steps=6, eval_every=2)
    bests = []
    for stop_at, resume in ((2, False), (4, True), (0, True)):
        train_rl.main(replace(cfg, stop_at=stop_at, resume=resume))
        bests.append(read_pointer(cfg.out_dir, "best"))
    assert bests == ["ckpt_000000.pt", "ckpt_000000.pt", "ckpt_000006.pt"]


def test_train_rl_nan_stops_and_keeps_the_checkpoint(tiny_runs, tmp_path, monkeypatch):
    cfg = rl_cfg(tiny_runs, tmp_path / "nan", max_steps=6, stop_at=2)
    train_rl.main(cfg)
    kept = read_pointer(cfg.out_dir, "latest")
    real = colar.group_advantages
    monkeypatch.setattr(colar, "group_advantages",  # every group has signal, so the loss is computed
                        lambda r, g: (real(r, g)[0], torch.ones(r.numel() // g, dtype=torch.bool)))
    monkeypatch.setattr(colar, "aggregate", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(UserError, match=r"became nan at step 3.*ckpt_000002.pt is kept"):
        train_rl.main(replace(cfg, stop_at=0, resume=True))
    assert read_pointer(cfg.out_dir, "latest") == kept
    assert load_checkpoint(cfg.out_dir, "latest")["step"] == 2


def test_train_rl_bad_input(tiny_runs, tmp_path):
    with pytest.raises(UserError, match="--group must be at least 2"):
        train_rl.main(rl_cfg(tiny_runs, tmp_path / "bad", group=1))
    with pytest.raises(UserError, match="exceeds the model's context"):  # no rollout may be cut short
        train_rl.main(rl_cfg(tiny_runs, tmp_path / "bad", max_latents=200))
    with pytest.raises(UserError, match="--stop_actions must be"):
        train_rl.main(rl_cfg(tiny_runs, tmp_path / "bad", stop_actions="some"))
    with pytest.raises(UserError, match="length_penalty"):
        train_rl.main(rl_cfg(tiny_runs, tmp_path / "bad", length_penalty=2.0))
    with pytest.raises(UserError, match="no latent head"):
        train_rl.main(rl_cfg(tiny_runs, tmp_path / "bad", init_from=tiny_runs["cot"]))
    with pytest.raises(UserError, match="not found"):
        train_rl.main(rl_cfg(tiny_runs, tmp_path / "bad", init_from=str(tmp_path / "missing")))
    train_rl.main(rl_cfg(tiny_runs, tmp_path / "mismatch", max_steps=1, eval_every=1))
    with pytest.raises(UserError, match="--c=1 does not match"):
        train_rl.main(rl_cfg(tiny_runs, tmp_path / "mismatch", c=1, resume=True))
    with pytest.raises(UserError, match="already holds checkpoints"):
        train_rl.main(rl_cfg(tiny_runs, tmp_path / "mismatch"))


def test_evaluate_sigma_min_overrides_the_heads_floor(tiny_runs, monkeypatch):
    floors = []
    real = evaluate.evaluate

    def spy(*args, **kw):
        floors.append(kw["head"].log_sigma_min)  # the head evaluate.main passes on
        return real(*args, **kw)

    monkeypatch.setattr(evaluate, "evaluate", spy)
    for sigma_min in (-1.0, 0.25):
        evaluate.main(evaluate.EvalConfig(ckpt=tiny_runs["colar"], split="test", n=2, c="1", decode="greedy",
                                          max_latents=2, sigma_min=sigma_min, device="cpu"))
    assert floors == [LOG_SIGMA_MIN, pytest.approx(math.log(0.25))]  # the SFT head has none; the flag sets one


def test_train_rl_step_without_signal_changes_nothing(tiny_runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(train_rl, "reward", lambda *args: 0.0)  # every group all wrong: no signal anywhere
    run = train_rl.main(rl_cfg(tiny_runs, tmp_path / "nosignal", max_steps=2))
    start = load_checkpoint(tiny_runs["colar"])
    sd = run["model"].state_dict()
    assert all(torch.equal(start["model"][k], sd[k]) for k in sd)
    assert "groups with signal 0.00" in capsys.readouterr().out


def test_rl_step_with_no_rollouts_returns_zeros_and_no_sigma():
    """Regression: with no rollout with signal anywhere (a step under torchrun), rl_step returned an empty tuple."""
    model, head = latent_model()
    params = list(model.parameters()) + list(head.parameters())
    cfg = SimpleNamespace(epochs=1, minibatch=8, clip_eps=0.2, length_average=True, grad_clip=0.0)
    trainee = Trainee(model, head, partial(colar.rl_loss, cfg=cfg))
    before = [p.detach().clone() for p in params]
    loss, norm, sigma = train_rl.rl_step(trainee, model, head, torch.optim.SGD(params, lr=1e-3), params, None, None,
                                         torch.zeros(0), cfg, torch.Generator().manual_seed(0), None)
    assert (loss, norm) == (0.0, 0.0) and math.isnan(sigma)
    assert all(torch.equal(a, p) for a, p in zip(before, params))

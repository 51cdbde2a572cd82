"""
Reinforcement learning of a CoLaR model at one speed c: GRPO-style (group-relative advantages, PPO clipping, no critic,
no KL), over sampled latent chains. Starts from a CoLaR SFT checkpoint.

Each step:
 1. Take `questions` training questions and sample `group` rollouts of each from the current policy, batched with the
    KV cache (sample.generate_latent): after <|bot|>, at every position the LM head samples a token, and the row stops
    thinking when it is <|eot|>; otherwise the latent head samples z ~ N(mu, sigma^2) and z * scale is fed in. Then the
    answer is sampled token by token (temperature 1, no top-p: the policy itself) until <|eos|>.
 2. Reward r = 1 for a correct answer, else 0 (`reward`, a pure function of the answer, the reference and #L;
    --length_penalty p, not in the paper and 0 by default, gives a correct answer 1 - p * #L / max_latents).
    Advantage within each group: A = (r - mean(r)) / (std(r) + 1e-8), std over the group (population std). A group
    whose rewards are all equal has A = 0 everywhere and carries no signal: it is counted and dropped before any
    gradient work. With a length penalty, a group whose rollouts are all correct but differ in #L has signal, and the
    division by its std makes the size of p irrelevant there: any p > 0 gives its shorter rollouts advantages of
    order +-1, as much as right against wrong.
 3. The actions of a rollout and their log-probabilities, recomputed in one teacher-forced pass (colar.py holds this
    objective: the replay's layout, the log-probabilities, advantages, the clipped surrogate and its aggregation):
      latents: log N(z_k; mu_k, sigma_k^2), averaged over the embedding dimensions, k = 1..L;
      answer:  log p(<|eot|>) where the row stopped thinking (not when the latent cap forced it), then log p of each
               answer token and of <|eos|> (when the answer was closed).
    logp_old is this pass right after the rollouts, without gradient (in slices of a minibatch's size).
 4. Per action, the PPO-clipped surrogate  l = -min(rho * A, clip(rho, 1 - eps, 1 + eps) * A),  rho = exp(logp -
    logp_old), the log-ratio clamped to +-LOG_RATIO_MAX so exp() stays finite. The loss of a rollout is the mean of l
    over its latents plus the mean over its answer actions (each over the rollout's *own* count), and the loss of a
    minibatch the mean over its rollouts: a correct short chain gets a larger push per latent than a correct long one,
    which shortens chains. --length_average false is the paper's "w/o average" ablation: a rollout's loss is the
    sum of l over its actions, so a rollout weighs in proportion to its length (the minibatch's: the mean over its
    rollouts, as before).
 5. The kept rollouts are shuffled into minibatches of `minibatch` rollouts; one AdamW step each (gradient clipped),
    for `epochs` passes. The first minibatch has rho = 1 (to rounding); clipping acts from the second on.

Simplifications, stated: the decisions to go on thinking (a non-<|eot|> token sampled at a latent position) are not
actions in the objective, only the final <|eot|> is (as in the paper; --stop_actions all adds each go-on decision,
log(1 - p(<|eot|>)), to the latent made at the same position); one speed c per run; no KL penalty and no
reference model (as in the paper). sigma gets a floor, --sigma_min (0.1 by default, in the head's normalised units where
a target entry has RMS 1): the SFT loss drives sigma to ~1e-4, where sampling explores nothing and the log-density
explodes as soon as mu moves (EXPERIMENTS.md, "RL, choosing the sigma floor").
The floor is a clamp: where the head's sigma lies below it (after SFT, in every dimension) RL samples with sigma =
--sigma_min and learns the mean alone (no gradient reaches the head's log-sigma layer through the clamp). The floor
is saved with the head, so sampled evaluation of the RL checkpoint draws from the same policy.

    python train_rl.py --init_from out/colar --c 5 --out_dir out/colar_rl
    python train_rl.py --init_from out/colar --c 5 --out_dir out/colar_rl_noavg --length_average false
    python train_rl.py --out_dir out/colar_rl --resume true
    torchrun --standalone --nproc_per_node=8 train_rl.py --init_from out/colar --c 5 --out_dir out/colar_rl

Randomness, and several processes (torchrun, DistributedDataParallel): every process draws the same step's questions
and rolls out its share, questions rank, rank + processes, ..., with its own generator, seeded from (seed, step, rank),
so a resumed run draws what the straight one would have. Each process computes its rollouts' rewards and advantages
(a group never spans processes) and cuts its kept rollouts into minibatches of --minibatch / processes rollouts; DDP
averages the gradients of the processes' minibatches, so one optimizer step sees about --minibatch rollouts (a
process that runs out of rollouts early contributes a zero loss). Process 0 validates, prints and writes the
checkpoints. The starting model is validated and saved as step 0 (ckpt_000000.pt), with the sigma floor (the policy
RL starts from, which samples more widely than the SFT checkpoint evaluated on its own), so `best` only ever moves to a
checkpoint that validates at least as well as it (sampled accuracy; a tie goes to the better greedy accuracy,
then to the later checkpoint), and the last line says when none did.
"""
import math
import os
import time
from dataclasses import asdict, dataclass
from functools import partial

import torch
import torch.distributed as dist

import colar
from checkpoint import (check_same, finite_model, generator_states, kept_checkpoint, load_checkpoint, open_run,
                        read_pointer, release_run, restore_training_state, save_checkpoint, started_from,
                        training_state)
from common import (EpochSampler, Trainee, UserError, all_mean, barrier, check_flags, cleanup_distributed,
                    make_optimizer, parse_config, print0, print_config, run_cli, setup_distributed, trained_speeds,
                    wrap_ddp)
from data.format import answers_match, check_split, read_train_val
from latent_head import LatentHead
from model import GPT, GPTConfig
from sample import generate_latent, score
from tokenizer import Tokenizer

RESUME_KEYS = ("init_from", "c", "group", "questions", "minibatch", "epochs", "seed", "sigma_min", "length_average",
               "length_penalty", "max_latents", "max_answer_tokens", "clip_eps", "stop_actions")


@dataclass
class RLConfig:
    init_from: str = "out/colar"   # the CoLaR SFT checkpoint or run folder to start from
    data_dir: str = "data/synth"   # folder with train.txt and val.txt
    c: int = 5                     # the speed the rollouts are prompted with
    group: int = 8                 # rollouts per question (G)
    questions: int = 16            # questions per step
    minibatch: int = 32            # rollouts per optimiser step (the official code: 8)
    epochs: int = 1                # passes over a step's rollouts
    clip_eps: float = 0.2          # PPO clipping range
    length_average: bool = True    # average each rollout's loss over its own length (false: "w/o average" ablation)
    sigma_min: float = 0.1         # floor on the latent head's sigma (normalised units)
    stop_actions: str = "final"    # final: only the <|eot|> ending the thought is an action (paper); all: go-on too
    length_penalty: float = 0.0    # a correct answer earns 1 - length_penalty * #L / max_latents (0: the paper's 0/1)
    max_latents: int = 64          # cap on latents per rollout
    max_answer_tokens: int = 16    # steps left for the answer after max_latents (a shorter chain leaves more)
    lr: float = 2e-5               # AdamW learning rate (constant; the official code: 1e-6, for a pretrained 1B model)
    weight_decay: float = 0.0      # AdamW weight decay on matrices
    grad_clip: float = 1.0         # clip the gradient norm to this (0: off)
    max_steps: int = 200           # RL steps
    out_dir: str = "out/colar_rl"  # checkpoints go here
    eval_every: int = 50           # validate and save a checkpoint every this many steps (and at the end)
    eval_n: int = 500              # validation questions (0: all); selection: sampled accuracy at c (top-p 0.9)
    keep_last: int = 3             # step checkpoints kept (the best by validation is always kept)
    log_every: int = 5             # print a progress line every this many steps
    stop_at: int = 0               # stop (with a checkpoint) at this step, to --resume later; 0: run to max_steps
    resume: bool = False           # continue from out_dir's latest checkpoint
    seed: int = 1337               # seeds the question order, the rollouts and the minibatches
    device: str = "auto"           # auto, cpu, cuda, mps


def reward(answer, reference, n_latents=0, length_penalty=0.0, max_latents=64, finished=True):
    """1 for a correct answer (closed by <|eos|>: finished), else 0; with a length penalty a correct answer earns
    1 - penalty * n_latents / max_latents, so of two correct rollouts the shorter one is better (not in the paper;
    off by default)."""
    if not finished or not answers_match(answer, reference):
        return 0.0
    return 1.0 - length_penalty * n_latents / max_latents


def rl_step(trainee, model, head, optimizer, params, b, lat, adv, cfg, gen, stop_id):
    """Policy-gradient updates on this process's kept rollouts of a step (advantages adv (N,)): `epochs` passes in
    minibatches, one optimizer step each. Returns the mean loss, gradient norm (before clipping) and sigma over the
    minibatches; a non-finite loss or gradient returns at once, with the weights untouched by it."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    per = max(1, cfg.minibatch // world)  # this process's rollouts per minibatch
    if adv.numel():  # in slices of a minibatch's size: the (N, T, vocab) logits of every rollout at once can be large
        with torch.no_grad():
            logp_old = torch.cat([colar.action_log_probs(model, head, b.rows(rows), lat[rows], stop_id)[0]
                                  for rows in torch.arange(adv.numel(), device=adv.device).split(per)])
    n_mb = torch.tensor(-(-adv.numel() // per), device=adv.device)
    if world > 1:  # every process takes as many optimizer steps
        dist.all_reduce(n_mb, op=dist.ReduceOp.MAX)
    stats = []
    for _ in range(cfg.epochs):
        order = torch.randperm(adv.numel(), generator=gen, device=adv.device)
        for i in range(int(n_mb)):
            rows = order[i * per:(i + 1) * per]
            mb = (b.rows(rows), lat[rows], logp_old[rows]) if adv.numel() else (None, None, None)
            loss, sigma = trainee(*mb, adv[rows])
            figures = all_mean([loss.item(), sigma.item()], adv.device)
            if not math.isfinite(figures[0]):  # the same in every process, so all of them stop here
                return figures[0], figures[0], figures[1]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
            if not torch.isfinite(norm):  # a finite loss with a non-finite gradient: stop before the weights break
                return norm.item(), norm.item(), figures[1]
            optimizer.step()
            stats.append((figures[0], norm.item(), figures[1]))
    if not stats:  # no process had a rollout with signal
        return 0.0, 0.0, float("nan")
    return tuple(sum(s) / len(stats) for s in zip(*stats))


def rollout_seed(seed, step, rank):
    """The seed of a process's rollouts at a step (0-based): its own stream."""
    return ((seed * 1_000_003 + step) * 100_003 + rank) % 2**63  # within what manual_seed takes


def check_config(cfg):
    check_flags(cfg, dict(stop_actions=("final", "all")),
                nonnegative=("eval_n", "weight_decay", "grad_clip", "keep_last", "stop_at"),
                positive=("c", "group", "questions", "minibatch", "epochs", "max_latents", "max_answer_tokens",
                          "max_steps", "eval_every", "log_every"))
    if cfg.group < 2:
        raise UserError(f"--group must be at least 2 (advantages compare rollouts of one question), got {cfg.group}")
    if not cfg.lr > 0 or not 0 < cfg.clip_eps < 1 or cfg.sigma_min < 0 or not 0 <= cfg.length_penalty <= 1:
        raise UserError(f"need lr > 0, 0 < clip_eps < 1, sigma_min >= 0 and 0 <= length_penalty <= 1, got "
                        f"lr={cfg.lr}, clip_eps={cfg.clip_eps}, sigma_min={cfg.sigma_min}, "
                        f"length_penalty={cfg.length_penalty}")
    for split in ("train", "val"):  # before the starting checkpoint is loaded
        check_split(os.path.join(cfg.data_dir, f"{split}.txt"))


def starting_point(cfg):
    """(checkpoint to resume or None, the checkpoint whose weights start this run: that one, or --init_from's)."""
    ckpt = open_run(cfg.out_dir, cfg.resume, "train_rl")
    try:
        if ckpt:
            check_same(ckpt["rl_config"], cfg, RESUME_KEYS)
        base = ckpt or load_checkpoint(cfg.init_from)
        if base.get("latent_head") is None:
            raise UserError(f"{base['path']} has no latent head: RL starts from a CoLaR checkpoint (train_sft.py "
                            f"--mode colar)")
        if base["config"].get("mode", "colar") != "colar":  # a baseline's thought module is no latent head
            raise UserError(f"{base['path']} was trained with --mode {base['config']['mode']}: RL starts from a "
                            f"CoLaR checkpoint (train_sft.py --mode colar)")
        if base["latent_config"]["deterministic"]:
            raise UserError(f"{base['path']} has a deterministic latent head (DL): there is no latent distribution "
                            f"to sample and reinforce")
    except UserError:
        release_run(cfg.out_dir)  # a refused run leaves the folder as it found it
        raise
    if cfg.c not in trained_speeds(base["config"]):
        print0(f"warning: c={cfg.c} is outside the speeds this model was trained on ({trained_speeds(base['config'])})")
    return ckpt, base


def setup_data(cfg, base):
    """The training and validation questions, the tokenizer and the model config; no rollout may be cut short by
    the model's context."""
    train, val = read_train_val(cfg.data_dir)
    tok, model_cfg = Tokenizer.from_spec(base["tokenizer"]), GPTConfig(**base["model_config"])
    longest, question = max((len(colar.prompt(tok, q, cfg.c)), q) for q, _, _ in train + val)
    room = model_cfg.block_size - longest - 1  # for the latents and the answer, beside the <|eot|>
    if room < 2:  # not even one latent and one answer token
        raise UserError(f"a prompt alone ({longest} tokens, question {question[:40]!r}) leaves no room for a "
                        f"latent and an answer in the model's context ({model_cfg.block_size}): lowering "
                        f"--max_latents cannot help; remove or shorten such questions in {cfg.data_dir}")
    if longest + cfg.max_latents + 1 + cfg.max_answer_tokens > model_cfg.block_size:
        raise UserError(f"the longest prompt ({longest} tokens) + --max_latents {cfg.max_latents} + 1 + "
                        f"--max_answer_tokens {cfg.max_answer_tokens} exceeds the model's context "
                        f"({model_cfg.block_size}): lower --max_latents or --max_answer_tokens (together to at most "
                        f"{room})")
    return train, val[:cfg.eval_n] if cfg.eval_n > 0 else val, tok, model_cfg


def rollout(model, head, tok, examples, cfg, step, rank):
    """`group` sampled rollouts of each example's question (groups consecutive), with this process's generator for
    the step, and their rewards. Returns (questions, rollouts, rewards (N,))."""
    model.eval()  # rollouts and updates alike: no dropout, so logp_old is the rollouts' own policy
    head.eval()
    questions = [q for q, _, _ in examples for _ in range(cfg.group)]
    gen = torch.Generator(device=head.scale.device).manual_seed(rollout_seed(cfg.seed, step, rank))
    outs = generate_latent(model, head, tok, [colar.prompt(tok, q, cfg.c) for q in questions], cfg.max_latents,
                           cfg.max_answer_tokens, latent_temperature=1.0, temperature=1.0, top_p=1.0, stop="sampled",
                           generator=gen, keep_latents=True)
    refs = [a for _, _, a in examples for _ in range(cfg.group)]
    rewards = torch.tensor([reward(tok.decode(o["answer"]).strip(), a, o["n_latents"], cfg.length_penalty,
                                   cfg.max_latents, o["finished"]) for o, a in zip(outs, refs)])
    return questions, outs, rewards


def validate(model, head, tok, val, cfg, step):
    """Sampled (as evaluate.py samples: top-p 0.9, a fixed seed) and greedy accuracy and mean #L at c; returns the
    two accuracies and the figures as a line of text."""
    caps = dict(head=head, max_latents=cfg.max_latents, max_new_tokens=cfg.max_answer_tokens)  # the rollouts' budget
    acc, n_lat, _ = score(model, tok, val, cfg.c, 1.0, 0.9, cfg.seed, latent_temperature=1.0, stop="sampled", **caps)
    gacc, gn, _ = score(model, tok, val, cfg.c, **caps)
    line = f"eval step {step}: val sampled {100 * acc:.1f}% #L {n_lat:.2f} | greedy {100 * gacc:.1f}% #L {gn:.2f}"
    return acc, gacc, line


def main(cfg):
    check_config(cfg)
    rank, world, _, device = setup_distributed(cfg.device)  # one process, unless started by torchrun
    ckpt, base = starting_point(cfg)
    start = ckpt.get("started_from") if ckpt else started_from(base)
    print_config(cfg)
    train, val, tok, model_cfg = setup_data(cfg, base)
    latent_config = {**base["latent_config"], "sigma_min": cfg.sigma_min}  # the floor is saved with the head
    model, head = GPT(model_cfg).to(device), LatentHead(model_cfg.n_embd, **latent_config).to(device)
    model.load_state_dict(base["model"])
    head.load_state_dict(base["latent_head"])
    optimizer = make_optimizer([model, head], cfg.lr, cfg.weight_decay)
    sampler = EpochSampler(len(train), cfg.questions, cfg.seed)  # the same questions in every process
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 1 + rank)  # minibatch order (rollouts: rollout_seed)
    step, best_val, best_greedy, before = 0, -1.0, -1.0, 0.0  # before: the run's seconds in the processes it resumes
    t_begin = time.time()  # the checkpoints' seconds count from here (the loop's minutes from its start)
    if ckpt:
        step, best_val = restore_training_state(ckpt, optimizer, sampler, gen)
        best_greedy, before = ckpt.get("best_greedy", -1.0), ckpt.get("seconds", 0.0)
    else:
        print0(f"initialised from {base['path']}")
    for g in optimizer.param_groups:
        g["lr"] = cfg.lr
    params = [p for g in optimizer.param_groups for p in g["params"]]
    stop_id = tok.eot if cfg.stop_actions == "all" else None
    trainee = wrap_ddp(Trainee(model, head, partial(colar.rl_loss, cfg=cfg, stop_id=stop_id)), device, world)
    print0(f"{len(train):,} training questions, {len(val):,} validation; speed c={cfg.c}; {cfg.questions} questions x "
           f"{cfg.group} rollouts per step over {world} process(es); device {device}")
    probe = torch.tensor([colar.prompt(tok, train[0][0], cfg.c)], device=device)  # for finite_model

    def checkpoint(step):
        """Validate and save the step's checkpoint in process 0 (the others wait at the barrier); `best` when it does
        at least as well as every earlier one, the starting model included: by sampled accuracy, ties by greedy
        accuracy (a tie on a few hundred sampled answers is common), then to the later checkpoint."""
        nonlocal best_val, best_greedy
        gen_states = generator_states(gen)  # every process's, for an exact resume
        if rank == 0:
            if not finite_model(model, head, probe):  # an update can blow the weights up with a finite loss
                raise UserError(f"training diverged at step {step}: its updates left weights or outputs that are not "
                                f"finite, not saved; lower --lr or raise --sigma_min; {kept_checkpoint(cfg.out_dir)}")
            acc, greedy, line = validate(model, head, tok, val, cfg, step)
            is_best = (acc, greedy) >= (best_val, best_greedy)
            if is_best:
                best_val, best_greedy = acc, greedy
            path = save_checkpoint(cfg.out_dir, step, {
                "script": "train_rl", "model": model.state_dict(), "model_config": asdict(model_cfg),
                "latent_head": head.state_dict(), "latent_config": latent_config, "config": base["config"],
                "rl_config": asdict(cfg), "tokenizer": tok.spec(), "step": step, "best_val": best_val,
                "best_greedy": best_greedy, "val_acc": acc, "seconds": before + time.time() - t_begin,
                "started_from": start,
                **training_state(optimizer, sampler, gen_states)},
                cfg.keep_last, is_best)
            print(f"{line} | best sampled {100 * best_val:.1f}% | saved {path}", flush=True)
        barrier()

    if not ckpt:
        checkpoint(0)  # the starting model: the baseline every later `best` must match
    last = min(cfg.max_steps, cfg.stop_at) if cfg.stop_at > 0 else cfg.max_steps
    first, t_start, history = step, time.time(), []  # history: (step, reward, #L, loss, grad norm) of every step
    sigma = float("nan")  # the head's mean sigma at the last rollouts trained on (none yet)
    while step < last:
        mine = [train[i] for i in sampler.next()][rank::world]  # this process's share of the step's questions
        questions, outs, rewards = rollout(model, head, tok, mine, cfg, step, rank)
        adv, signal = colar.group_advantages(rewards, cfg.group)
        keep = signal.repeat_interleave(cfg.group).nonzero().squeeze(1).tolist()
        b, lat = colar.replay_batch(tok, [questions[i] for i in keep], [outs[i] for i in keep], cfg.c, device)
        loss, norm, step_sigma = rl_step(trainee, model, head, optimizer, params, b, lat, adv[keep].to(device), cfg,
                                         gen, stop_id) if len(keep) or world > 1 else (0.0, 0.0, float("nan"))
        sigma = sigma if math.isnan(step_sigma) else step_sigma
        if not math.isfinite(loss):
            raise UserError(f"the RL loss or its gradient became {loss} at step {step + 1}: lower --lr or raise "
                            f"--sigma_min; {kept_checkpoint(cfg.out_dir)}")
        r, correct, n_lat, with_signal = all_mean([rewards.mean().item(), (rewards > 0).float().mean().item(),
                                                   sum(o["n_latents"] for o in outs) / len(outs),
                                                   signal.float().mean().item()], device)
        history.append((step, r, n_lat, loss, norm))
        step += 1
        if step % cfg.log_every == 0 or step == last:
            elapsed = time.time() - t_start
            print0(f"step {step}/{cfg.max_steps} | reward {r:.3f} | accuracy {correct:.3f} | #L {n_lat:.2f} | "
                   f"groups with signal {with_signal:.2f} | loss {loss:+.4f} | grad norm {norm:.3f} | "
                   f"sigma {'-' if math.isnan(sigma) else f'{sigma:.4f}'} | {elapsed / 60:.1f} min | "
                   f"eta {(last - step) * elapsed / (step - first) / 60:.1f} min", flush=True)
        if step % cfg.eval_every == 0 or step == last:
            checkpoint(step)
    minutes = (time.time() - t_start) / 60
    start_is_best = read_pointer(cfg.out_dir, "best") == "ckpt_000000.pt"
    release_run(cfg.out_dir)
    cleanup_distributed()
    print0(f"done: {step} steps in {minutes:.1f} min"
           + (f" ({(before + time.time() - t_begin) / 60:.1f} with the processes it resumed)" if before else "")
           + f", best val sampled accuracy {100 * best_val:.1f}%"
           + ("; no checkpoint beat the starting model: `best` is its copy, ckpt_000000.pt" if start_is_best else ""))
    return {"model": model, "head": head, "tokenizer": tok, "best_val": best_val, "minutes": minutes, "step": step,
            "history": history}


if __name__ == "__main__":
    run_cli(main, parse_config(RLConfig))

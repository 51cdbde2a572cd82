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
    gradient work.
 3. The actions of a rollout and their log-probabilities, recomputed in one teacher-forced pass:
      latents: log N(z_k; mu_k, sigma_k^2), averaged over the embedding dimensions, k = 1..L;
      answer:  log p(<|eot|>) where the row stopped thinking (not when the latent cap forced it), then log p of each
               answer token and of <|eos|> (when the answer was closed).
    logp_old is this pass right after the rollouts, without gradient.
 4. Per action, the PPO-clipped surrogate  l = -min(rho * A, clip(rho, 1 - eps, 1 + eps) * A),  rho = exp(logp -
    logp_old), the log-ratio clamped to +-LOG_RATIO_MAX so exp() stays finite. The loss of a rollout is the mean of l
    over its latents plus the mean over its answer actions (each over the rollout's *own* count), and the loss of a
    minibatch the mean over its rollouts: a correct short chain gets a larger push per latent than a correct long one,
    which shortens chains. --length_average false is the paper's "w/o average" ablation: a rollout's loss is the
    sum of l over its actions, so a rollout weighs in proportion to its length (the minibatch's: the mean over its
    rollouts, as before).
 5. The kept rollouts are shuffled into minibatches of `minibatch` rollouts; one AdamW step each (gradient clipped),
    for `epochs` passes. The first minibatch has rho = 1; clipping acts from the second on.

Simplifications, stated: the decisions to go on thinking (a non-<|eot|> token sampled at a latent position) are not
actions in the objective, only the final <|eot|> is (as in the paper; --stop_actions all adds each go-on decision,
log(1 - p(<|eot|>)), to the latent made at the same position); one speed c per run; no KL penalty and no
reference model (as in the paper). sigma gets a floor, --sigma_min (0.1 by default, in the head's normalised units where
a target entry has RMS 1): the SFT loss drives sigma to ~1e-4, where sampling explores nothing and the log-density
explodes as soon as mu moves (a trial without the floor had a gradient norm of 5.7e3 at step 1 and NaN at step 3).
The floor is saved with the head, so sampled evaluation of the RL checkpoint draws from the same policy.

    python train_rl.py --init_from out/colar --c 5 --out_dir out/colar_rl
    python train_rl.py --init_from out/colar --c 5 --out_dir out/colar_rl_noavg --length_average false
    python train_rl.py --out_dir out/colar_rl --resume true
    torchrun --standalone --nproc_per_node=8 train_rl.py --init_from out/colar --c 5 --out_dir out/colar_rl

Randomness, and several processes (torchrun, DistributedDataParallel): a step's questions are cut into
--rollout_shards contiguous shards (0: one per process), and each shard is rolled out with its own generator, seeded
from (seed, step, shard). Under torchrun process r rolls out shards r, r + processes, ...; every process then gathers
all of them in shard order, so the rollouts, rewards and advantages are those of one process with the same
--rollout_shards, and a resumed run draws what the straight one would have. The minibatch order comes from one
generator, the same in every process (saved in checkpoints); each process trains on rows r, r + processes, ... of
every minibatch, its loss weighted by its share of the minibatch's rollouts, so the averaged gradient is the whole
minibatch's. Process 0 validates, prints and writes the checkpoints.
"""
import os
import time
from dataclasses import asdict, dataclass, replace

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from common import (UserError, autocast, barrier, cleanup_distributed, load_checkpoint, parse_config, print0,
                    print_config, read_pointer, run_cli, save_checkpoint, setup_distributed, trained_speeds)
from data.format import answers_match, read_split
from evaluate import score
from latent_head import LatentHead, gaussian_log_prob
from model import GPT, GPTConfig
from sample import generate_latent
from tokenizer import Tokenizer
from train_sft import EpochSampler, make_optimizer, restore_training_state

LOG_RATIO_MAX = 10.0  # |log rho| is clamped to this before exp()


@dataclass
class RLConfig:
    init_from: str = "out/colar"   # the CoLaR SFT checkpoint or run folder to start from
    data_dir: str = "data/synth"   # folder with train.txt and val.txt
    c: int = 5                     # the speed the rollouts are prompted with
    group: int = 8                 # rollouts per question (G)
    questions: int = 16            # questions per step
    minibatch: int = 32            # rollouts per optimiser step
    epochs: int = 1                # passes over a step's rollouts
    clip_eps: float = 0.2          # PPO clipping range
    length_average: bool = True    # average each rollout's loss over its own length (false: "w/o average" ablation)
    sigma_min: float = 0.1         # floor on the latent head's sigma (normalised units)
    stop_actions: str = "final"    # final: only the <|eot|> ending the thought is an action (paper); all: go-on too
    length_penalty: float = 0.0    # a correct answer earns 1 - length_penalty * #L / max_latents (0: the paper's 0/1)
    max_latents: int = 64          # cap on latents per rollout
    max_answer_tokens: int = 16    # steps left for the answer after max_latents (a shorter chain leaves more)
    lr: float = 2e-5               # AdamW learning rate (constant)
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
    rollout_shards: int = 0        # rollout shards per step, each with its own seed (0: one per process; see above)
    device: str = "auto"           # auto, cpu, cuda, mps


def reward(answer, reference, n_latents=0, length_penalty=0.0, max_latents=64):
    """1 for a correct answer, else 0; with a length penalty a correct answer earns 1 - penalty * n_latents /
    max_latents, so of two correct rollouts the shorter one is better (not in the paper; off by default)."""
    if not answers_match(answer, reference):
        return 0.0
    return 1.0 - length_penalty * n_latents / max_latents


def group_advantages(rewards, group):
    """rewards (N,), N = groups * group, each group consecutive -> advantages (N,) and signal (groups,): True where
    the group's rewards are not all equal."""
    r = rewards.view(-1, group)
    signal = (r != r[:, :1]).any(dim=1)  # exact: float rewards of one value can have a std of 1e-8, not 0
    adv = (r - r.mean(dim=1, keepdim=True)) / (r.std(dim=1, correction=0, keepdim=True) + 1e-8)
    return torch.where(signal[:, None], adv, 0.0).reshape(-1), signal


def clipped_surrogate(logp, logp_old, adv, eps):
    """Per-action PPO loss -min(rho A, clip(rho, 1 - eps, 1 + eps) A), rho = exp(logp - logp_old). The log-ratio is
    clamped so exp() stays finite; beyond the clamp the gradient is 0 (only reachable after many updates per batch)."""
    ratio = (logp - logp_old).clamp(-LOG_RATIO_MAX, LOG_RATIO_MAX).exp()
    return -torch.min(ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv)


def aggregate(per_action, lat_mask, tok_mask, length_average=True):
    """per_action (N, T): each action's loss at its position; lat_mask, tok_mask (N, T): where the latent and the
    answer actions are. The mean over rollouts of: length-averaged, the mean over its latents plus the mean over its
    answer actions; otherwise (the "w/o average" ablation) the sum over all its actions, so a long rollout pushes
    harder."""
    lat, tok = lat_mask.to(per_action.dtype), tok_mask.to(per_action.dtype)
    if not length_average:
        return (per_action * (lat + tok)).sum(1).mean()
    per_rollout = ((per_action * lat).sum(1) / lat.sum(1).clamp(min=1)
                   + (per_action * tok).sum(1) / tok.sum(1).clamp(min=1))
    return per_rollout.mean()


def rollout_batch(tok, prompts, rollouts, device):
    """The teacher-forced layout of rollouts: row i is prompt | L latents | <|eot|> answer [<|eos|>], right-padded.
    Returns a dict of tensors, one row per rollout: idx (N, T) token ids (pad at the latent slots), mask (N, T) real
    positions, latent_in (N, T) the latent slots, lat_x (N, T, C) the fed latents in their slots (0 elsewhere),
    lat_at (N, T) the positions whose hidden state produced a latent (<|bot|> .. the one before the last latent; the
    latent it produced sits one position later), tok_at (N, T) the positions whose logits produced an answer action,
    and tok_target (N, T) that action's token (-1 elsewhere)."""
    N = len(rollouts)
    T = max(len(p) + r["n_latents"] + 1 + len(r["answer"]) + r["finished"] for p, r in zip(prompts, rollouts))
    z0 = next((r["latents"][0] for r in rollouts if r["latents"]), torch.zeros(1))  # for the width and dtype
    b = {"idx": torch.full((N, T), tok.pad), "latent_in": torch.zeros(N, T, dtype=torch.bool),
         "lat_x": torch.zeros(N, T, z0.numel(), dtype=z0.dtype), "lat_at": torch.zeros(N, T, dtype=torch.bool),
         "tok_at": torch.zeros(N, T, dtype=torch.bool), "tok_target": torch.full((N, T), -1),
         "mask": torch.zeros(N, T, dtype=torch.bool)}
    for i, (p, r) in enumerate(zip(prompts, rollouts)):
        P, L = len(p), r["n_latents"]
        ans = r["answer"] + ([tok.eos] if r["finished"] else [])
        b["idx"][i, :P] = torch.tensor(p)
        b["idx"][i, P + L] = tok.eot
        b["idx"][i, P + L + 1:P + L + 1 + len(ans)] = torch.tensor(ans, dtype=torch.long)
        b["latent_in"][i, P:P + L] = True
        b["mask"][i, :P + L + 1 + len(ans)] = True  # by length: a sampled answer may contain the pad token itself
        if L:
            b["lat_x"][i, P:P + L] = torch.stack(r["latents"])
        b["lat_at"][i, P - 1:P - 1 + L] = True
        start = P + L if r["hit_cap"] else P + L - 1  # a forced <|eot|> is not an action
        targets = ([] if r["hit_cap"] else [tok.eot]) + ans
        b["tok_at"][i, start:start + len(targets)] = True
        b["tok_target"][i, start:start + len(targets)] = torch.tensor(targets, dtype=torch.long)
    return {k: v.to(device) for k, v in b.items()}


def action_log_probs(model, head, b, go_on_id=None):
    """Log-probabilities of every action of a rollout batch (from rollout_batch), in one teacher-forced pass.
    Returns logp (N, T): at lat_at the Gaussian log-density (mean over dimensions) of the latent produced there, at
    tok_at the log-prob of the token produced there, 0 elsewhere; and the mean sigma over the latent positions.
    With go_on_id (the <|eot|> id), a latent's action also holds the decision to go on thinking made at the same
    position: its log-prob gains log(1 - p(<|eot|>))."""
    x = torch.where(b["latent_in"][..., None], b["lat_x"].to(model.wte.weight.dtype), model.wte(b["idx"]))
    with autocast(x.device):  # the model in bf16 on CUDA (fp32 elsewhere); the head and log-densities in fp32
        logits, h = model(embeds=x, mask=b["mask"], return_hidden=True)
    mu, log_sigma = head(h[b["lat_at"]])  # (M, C), in the head's own dtype
    z = head.normalise(b["lat_x"][b["latent_in"]])  # (M, C) the latents, in the same row-major order as lat_at
    logp = torch.zeros(b["idx"].shape, device=x.device, dtype=mu.dtype)
    lat_logp = gaussian_log_prob(z, mu, log_sigma)
    if go_on_id is not None:  # log(1 - p(eot)) = logsumexp over the other tokens - logsumexp over all, stably
        go_logits = logits[b["lat_at"]].to(torch.promote_types(logits.dtype, torch.float32))
        others = go_logits.clone()
        others[:, go_on_id] = float("-inf")
        lat_logp = lat_logp + (others.logsumexp(-1) - go_logits.logsumexp(-1)).to(lat_logp.dtype)
    logp = logp.masked_scatter(b["lat_at"], lat_logp)
    tok_logits = logits[b["tok_at"]]
    tok_logits = tok_logits.to(torch.promote_types(tok_logits.dtype, torch.float32))  # at least fp32 (bf16 on GPU)
    tok_logp = F.log_softmax(tok_logits, dim=-1).gather(1, b["tok_target"][b["tok_at"]][:, None])
    logp = logp.masked_scatter(b["tok_at"], tok_logp.squeeze(1).to(logp.dtype))
    sigma = log_sigma.exp().mean() if log_sigma.numel() else torch.zeros((), device=x.device)
    return logp, sigma


class RLLoss(torch.nn.Module):
    """The model and the latent head as one module whose forward is the loss of some rollouts of a minibatch: the one
    module DistributedDataParallel wraps, so the gradients of both are averaged over the processes.
    Returns (loss, the latent head's mean sigma over the rollouts' latents)."""

    def __init__(self, model, head, cfg, go_on_id=None):
        super().__init__()
        self.model, self.head, self.cfg, self.go_on_id = model, head, cfg, go_on_id

    def forward(self, mb, logp_old, adv):
        if adv.numel() == 0:  # no rollouts (a process's share of a small minibatch): 0, through every parameter, so
            zero = sum(p.sum() for p in self.parameters()) * 0.0  # that the gradients are averaged in every process
            return zero, zero.detach()
        logp, sigma = action_log_probs(self.model, self.head, mb, self.go_on_id)
        per_action = clipped_surrogate(logp, logp_old, adv[:, None], self.cfg.clip_eps)
        return aggregate(per_action, mb["lat_at"], mb["tok_at"], self.cfg.length_average), sigma


def rl_step(model, head, optimizer, params, b, adv, cfg, gen, go_on_id=None, trainee=None):
    """Policy-gradient updates on one step's kept rollouts (batch b with advantages adv (N,)), the same in every
    process. Under torchrun, trainee is RLLoss(model, head, ...) in DDP, and each process trains on rows rank,
    rank + world, ... of every minibatch. Returns the mean loss, gradient norm (before clipping) and sigma over the
    minibatches, the same in every process."""
    trainee = trainee or RLLoss(model, head, cfg, go_on_id)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    with torch.no_grad():
        logp_old, _ = action_log_probs(model, head, b, go_on_id)  # every process, all rows: as one process does
    N = adv.numel()
    n_lat = b["lat_at"].sum(1)  # (N,) latents of each rollout: a share's weight in the minibatch's mean sigma
    stats = []
    for _ in range(cfg.epochs):
        order = torch.randperm(N, generator=gen, device=adv.device)
        for i in range(0, N, cfg.minibatch):
            rows = order[i:i + cfg.minibatch]
            mine = rows[rank::world]  # this process's share, maybe empty
            loss, sigma = trainee({k: v[mine] for k, v in b.items()}, logp_old[mine], adv[mine])
            loss = loss * (len(mine) / len(rows))  # the loss is a mean over rollouts: shares add up to the whole
            lat_share = n_lat[mine].sum() / n_lat[rows].sum().clamp(min=1)  # of the minibatch's latents, for sigma
            figures = torch.stack([loss.detach(), sigma.detach() * lat_share])
            if world > 1:
                dist.all_reduce(figures)  # the minibatch's loss and sigma, the same in every process
            if not torch.isfinite(figures[0]):  # so every process stops here together
                return figures[0], figures[0], figures[1]
            optimizer.zero_grad(set_to_none=True)
            (loss * world).backward()  # times world: DDP's average over processes becomes their sum
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
            if not torch.isfinite(norm):  # a finite loss with a non-finite gradient: stop before the weights break
                return norm.detach(), norm.detach(), figures[1]
            optimizer.step()
            stats.append(torch.stack([figures[0], norm.detach(), figures[1]]))
    return tuple(torch.stack(stats).mean(0))


def rollouts(model, head, tok, questions, cfg, gen):
    """`group` sampled rollouts of each question (groups consecutive); returns (prompts, rollouts)."""
    prompts = [tok.prompt(q, cfg.c) for q in questions for _ in range(cfg.group)]
    out = generate_latent(model, head, tok, prompts, cfg.max_latents, cfg.max_answer_tokens, latent_temperature=1.0,
                          temperature=1.0, top_p=1.0, stop="sampled", generator=gen, keep_latents=True)
    return prompts, out


def shard_seed(seed, step, shard):
    """The seed of one shard's rollouts at a step (0-based): its own stream, whichever process draws it."""
    return ((seed * 1_000_003 + step) * 100_003 + shard) % 2**63  # within what manual_seed takes


def shard_rollouts(model, head, tok, questions, cfg, step, shards, which):
    """The rollouts of the shards `which` of a step's questions (cut into `shards` contiguous shards), each sampled
    with its own generator: {shard: its rollouts}. A shard's rollouts do not depend on the other shards drawn."""
    n = len(questions) // shards
    device = next(model.parameters()).device
    out = {}
    for s in which:
        gen = torch.Generator(device=device).manual_seed(shard_seed(cfg.seed, step, s))
        out[s] = rollouts(model, head, tok, questions[s * n:(s + 1) * n], cfg, gen)[1]
    return out


def step_rollouts(model, head, tok, questions, cfg, step):
    """All the rollouts of a step, in question order, in every process: process r draws shards r, r + world, ...,
    and all_gather_object brings every process the others' (CPU tensors). Returns (prompts, rollouts)."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    shards = cfg.rollout_shards
    outs = shard_rollouts(model, head, tok, questions, cfg, step, shards, range(rank, shards, world))
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, outs)
        outs = {s: o for part in parts for s, o in part.items()}
    prompts = [tok.prompt(q, cfg.c) for q in questions for _ in range(cfg.group)]
    return prompts, [o for s in range(shards) for o in outs[s]]


def check_config(cfg):
    for name in ("c", "group", "questions", "minibatch", "epochs", "max_latents", "max_answer_tokens", "max_steps",
                 "eval_every", "log_every"):
        if getattr(cfg, name) <= 0:
            raise UserError(f"--{name} must be positive, got {getattr(cfg, name)}")
    if cfg.rollout_shards < 0:
        raise UserError(f"--rollout_shards must be >= 0 (0: one per process), got {cfg.rollout_shards}")
    if cfg.stop_actions not in ("final", "all"):
        raise UserError(f"--stop_actions must be final or all, got {cfg.stop_actions!r}")
    if cfg.group < 2:
        raise UserError(f"--group must be at least 2 (advantages compare rollouts of one question), got {cfg.group}")
    if not cfg.lr > 0 or not 0 < cfg.clip_eps < 1 or cfg.sigma_min < 0 or not 0 <= cfg.length_penalty <= 1:
        raise UserError(f"need lr > 0, 0 < clip_eps < 1, sigma_min >= 0 and 0 <= length_penalty <= 1, got "
                        f"lr={cfg.lr}, clip_eps={cfg.clip_eps}, sigma_min={cfg.sigma_min}, "
                        f"length_penalty={cfg.length_penalty}")


def main(cfg):
    check_config(cfg)
    rank, world, _, device = setup_distributed(cfg.device)  # one process, unless started by torchrun
    cfg = replace(cfg, rollout_shards=cfg.rollout_shards or world)  # the effective number, saved and checked
    if cfg.questions % cfg.rollout_shards:
        raise UserError(f"--rollout_shards {cfg.rollout_shards} does not divide --questions {cfg.questions} (a shard "
                        f"holds whole questions)")
    ckpt = None
    if read_pointer(cfg.out_dir, "latest"):
        if not cfg.resume:
            raise UserError(f"{cfg.out_dir} already holds checkpoints: pass --resume true to continue that run, "
                            f"or choose another --out_dir")
        ckpt = load_checkpoint(cfg.out_dir, which="latest")
        if "rl_config" not in ckpt:
            raise UserError(f"{ckpt['path']} is not an RL checkpoint: choose another --out_dir")
        ckpt["rl_config"].setdefault("rollout_shards", 1)  # saved before the flag existed (then: one generator)
        for key in ("init_from", "c", "group", "questions", "minibatch", "epochs", "seed", "sigma_min",
                    "length_average", "length_penalty", "max_latents", "max_answer_tokens", "clip_eps",
                    "stop_actions", "rollout_shards"):
            if ckpt["rl_config"][key] != getattr(cfg, key):
                raise UserError(f"--{key}={getattr(cfg, key)} does not match the run being resumed "
                                f"({ckpt['rl_config'][key]}): resume with the run's own settings")
    elif cfg.resume:
        raise UserError(f"--resume true, but {cfg.out_dir} holds no checkpoint to resume from")
    base = ckpt or load_checkpoint(cfg.init_from)
    if base.get("latent_head") is None:
        raise UserError(f"{base['path']} has no latent head: RL starts from a CoLaR checkpoint (train_sft.py --mode "
                        f"colar)")
    if base["latent_config"].get("deterministic"):
        raise UserError(f"{base['path']} has a deterministic latent head (DL): there is no latent distribution to "
                        f"sample and reinforce")
    speeds = trained_speeds(base["config"])
    if cfg.c not in speeds:
        print0(f"warning: c={cfg.c} is outside the speeds this model was trained on ({speeds})")
    print_config(cfg)
    train = read_split(os.path.join(cfg.data_dir, "train.txt"))
    val = read_split(os.path.join(cfg.data_dir, "val.txt"))
    val = val[:cfg.eval_n] if cfg.eval_n > 0 else val
    tok = Tokenizer.from_spec(base["tokenizer"])
    model_cfg = GPTConfig(**base["model_config"])
    longest = max(len(tok.prompt(q, cfg.c)) for q, _, _ in train + val)
    if longest + cfg.max_latents + 1 + cfg.max_answer_tokens > model_cfg.block_size:  # no rollout may be cut short
        raise UserError(f"the longest prompt ({longest} tokens) + --max_latents {cfg.max_latents} + 1 + "
                        f"--max_answer_tokens {cfg.max_answer_tokens} exceeds the model's context "
                        f"({model_cfg.block_size}): lower --max_latents or --max_answer_tokens")
    latent_config = {**base["latent_config"], "sigma_min": cfg.sigma_min}

    torch.manual_seed(cfg.seed)
    model = GPT(model_cfg).to(device)
    head = LatentHead(model_cfg.n_embd, **latent_config).to(device)
    model.load_state_dict(base["model"])
    head.load_state_dict(base["latent_head"])
    optimizer = make_optimizer([model, head], cfg.lr, cfg.weight_decay)
    sampler = EpochSampler(len(train), cfg.questions, cfg.seed)
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)  # minibatch order (rollouts: shard_seed)
    step, best_val = 0, -1.0
    if ckpt:
        step, best_val = restore_training_state(ckpt, optimizer, sampler, gen)
    else:
        print0(f"initialised from {base['path']}")
    for g in optimizer.param_groups:
        g["lr"] = cfg.lr
    params = [p for g in optimizer.param_groups for p in g["params"]]
    go_on_id = tok.eot if cfg.stop_actions == "all" else None
    trainee = RLLoss(model, head, cfg, go_on_id)  # checkpoints, rollouts and validation use model and head themselves
    if world > 1:
        trainee = DDP(trainee, device_ids=[device.index] if device.type == "cuda" else None)
    print0(f"{len(train):,} training questions, {len(val):,} validation; speed c={cfg.c}; {cfg.questions} questions x "
           f"{cfg.group} rollouts per step in {cfg.rollout_shards} shard(s) over {world} process(es); device {device}")
    if cfg.rollout_shards % world:
        print0(f"warning: {cfg.rollout_shards} rollout shards over {world} processes: some processes roll out more "
               f"shards than others, which wait")

    def validate():
        """Sampled (as evaluate.py samples: top-p 0.9, a fixed seed) and greedy accuracy and mean #L on the validation
        questions at c."""
        model.eval()
        head.eval()
        caps = dict(head=head, max_latents=cfg.max_latents, max_new_tokens=cfg.max_latents + 1 + cfg.max_answer_tokens)
        sampled = score(model, tok, val, cfg.c, 1.0, 0.9, cfg.seed, latent_temperature=1.0, stop="sampled", **caps)
        greedy = score(model, tok, val, cfg.c, **caps)
        return sampled, greedy

    def checkpoint(step, val_acc, best):
        return save_checkpoint(cfg.out_dir, step, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "model_config": asdict(model_cfg),
            "latent_head": head.state_dict(), "latent_config": latent_config, "config": base["config"],
            "rl_config": asdict(cfg), "tokenizer": tok.spec(), "step": step, "sampler": sampler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "train": gen.get_state()}, "best_val": best_val,
            "val_acc": val_acc}, cfg.keep_last, best)

    if step == 0 and rank == 0:
        (acc, n_lat, _), (gacc, gn, _) = validate()
        print(f"eval step 0: val sampled {100 * acc:.1f}% #L {n_lat:.2f} | greedy {100 * gacc:.1f}% #L {gn:.2f}")
    barrier()
    last = min(cfg.max_steps, cfg.stop_at) if cfg.stop_at > 0 else cfg.max_steps
    first, t_start = step, time.time()
    history = []
    sigma = torch.tensor(float("nan"))  # the latent head's mean sigma at the last rollouts trained on
    while step < last:
        batch = [train[i] for i in sampler.next()]
        model.eval()  # rollouts and updates alike: no dropout, so logp_old is the rollouts' own policy
        head.eval()
        prompts, outs = step_rollouts(model, head, tok, [q for q, _, _ in batch], cfg, step)  # all, every process
        refs = [a for _, _, a in batch for _ in range(cfg.group)]
        rewards = torch.tensor([reward(tok.decode(o["answer"]).strip(), a, o["n_latents"], cfg.length_penalty,
                                       cfg.max_latents) for o, a in zip(outs, refs)])
        correct = (rewards > 0).float().mean()
        adv, signal = group_advantages(rewards, cfg.group)
        keep = signal.repeat_interleave(cfg.group).nonzero().squeeze(1)
        n_lat = sum(o["n_latents"] for o in outs) / len(outs)
        loss = norm = torch.zeros(())
        if len(keep):
            b = rollout_batch(tok, [prompts[i] for i in keep.tolist()], [outs[i] for i in keep.tolist()], device)
            loss, norm, sigma = rl_step(model, head, optimizer, params, b, adv[keep].to(device), cfg, gen, go_on_id,
                                        trainee)
            if not torch.isfinite(loss):
                kept = read_pointer(cfg.out_dir, "latest")
                raise UserError(f"the RL loss or its gradient became {loss.item()} at step {step + 1}; "
                                + (f"the last good checkpoint {os.path.join(cfg.out_dir, kept)} is kept"
                                   if kept else "no checkpoint was written yet")
                                + ": lower --lr or raise --sigma_min")
        history.append((step, float(rewards.mean()), n_lat, loss.item(), norm.item()))
        step += 1
        if step % cfg.log_every == 0 or step == last:
            elapsed = time.time() - t_start
            eta = (last - step) * elapsed / (step - first)
            print0(f"step {step}/{cfg.max_steps} | reward {rewards.mean():.3f} | accuracy {correct:.3f} "
                   f"| #L {n_lat:.2f} | groups with signal {signal.float().mean():.2f} | loss {loss.item():+.4f} "
                   f"| grad norm {norm.item():.3f} | sigma {sigma.item():.4f} | {elapsed / 60:.1f} min "
                   f"| eta {eta / 60:.1f} min", flush=True)
        if step % cfg.eval_every == 0 or step == last:
            if rank == 0:  # validation and checkpoints in process 0; the others wait at the barrier
                (acc, n_val, _), (gacc, gn, _) = validate()
                is_best = acc >= best_val
                best_val = max(best_val, acc)
                path = checkpoint(step, acc, is_best)
                print(f"eval step {step}: val sampled {100 * acc:.1f}% #L {n_val:.2f} | greedy {100 * gacc:.1f}% "
                      f"#L {gn:.2f} | best sampled {100 * best_val:.1f}% | saved {path}", flush=True)
            barrier()
    minutes = (time.time() - t_start) / 60
    cleanup_distributed()
    print0(f"done: {step} steps in {minutes:.1f} min, best val sampled accuracy {100 * best_val:.1f}%")
    return {"model": model, "head": head, "tokenizer": tok, "best_val": best_val, "minutes": minutes, "step": step,
            "history": history}


if __name__ == "__main__":
    run_cli(main, parse_config(RLConfig))

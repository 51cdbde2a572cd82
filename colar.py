"""
CoLaR's method in one place: how an example becomes a sequence, what the latent head learns to predict, the SFT loss,
and RL's objective over sampled latent chains (at the end; train_rl.py's docstring states it).

Every sequence this project trains on, replays or decodes has one layout:

    [question] <|speed|> c <|bot|> [chain] <|eot|> [answer] <|eos|>

where the chain is the reasoning in text tokens (CoT, c = 1), nothing (No-CoT, written with c = 0), or latent slots
(CoLaR at speed c): one slot per chunk of c chain tokens, K = ceil(L / c) of them. SFT feeds a chunk's compressed
embedding in its slot (compress.py); RL's replay feeds the latent a rollout sampled there; decoding starts from the
prompt, the part up to <|bot|>. `layout` builds all of them, `prompt` is its first part.

One example followed through, c = 2, chain `<<3*4=2>>` (7 char tokens, `<<` and `>>` one each; the last chunk is `>>`
alone, so z4 = e_>> / sqrt(1)):

    position   P-2   P-1    P     P+1   P+2   P+3   P+4    P+5   P+6  ...
    input      '2'  <bot>   z1    z2    z3    z4   <eot>   ' '   '2'  ...     z_k: chunk k's (e_a + e_b) / sqrt(2)
    targets   <bot> tok~z1 tok~z2 tok~z3 tok~z4 <eot>  ' '   '2'  <eos>       tok~z_k: a token drawn from chunk k
    latent_in   .     .     x     x     x     x     .      .     .          a latent is fed here
    latent_out  .     x     x     x     x     .     .      .     .          the latent head predicts the next z
    eot_at      .     .     .     .     .     x     .      .     .          here it predicts the <eot> embedding

The LM head is trained with cross-entropy at every position from the last speed token on (the question itself is
never supervised); at <|bot|> and at each slot its label is one token drawn uniformly from the next chunk, redrawn
every step, and <|eot|> after the last. At the same positions the latent head learns the next compressed embedding
(the <|eot|> embedding after the last chunk): CE + latent_weight * latent loss (latent_head.py has the losses).
"""
import math
from dataclasses import dataclass, fields

import torch

import torch.nn.functional as F

from common import autocast, full_precision
from compress import compress, sample_chunk_labels
from data.format import chain_text
from latent_head import gaussian_log_prob, latent_loss


# --- examples as ids -----------------------------------------------------------------------------------------------
def example_texts(question, steps, answer, mode):
    """The three texts of an example that are encoded separately: question, chain (empty for nocot), answer."""
    return question, "" if mode == "nocot" else chain_text(steps), " " + answer


def encode(tok, examples, mode):
    """(question, steps, answer) examples -> (question ids, chain ids, answer ids)."""
    return [tuple(tok.encode(t) for t in example_texts(*ex, mode)) for ex in examples]


def prompt(tok, question, c):
    """[question] <|speed|> c <|bot|>: the ids a model is given at inference. question: text or ids."""
    q = tok.encode(question) if isinstance(question, str) else list(question)
    return q + [tok.speed] + tok.encode(str(c)) + [tok.bot]


# --- the layout ----------------------------------------------------------------------------------------------------
@dataclass
class Batch:
    """A right-padded batch of sequences in the layout above (B rows, T positions)."""
    idx: torch.Tensor         # (B, T) input token ids; <|pad|> in latent slots and after a row's end
    mask: torch.Tensor        # (B, T) True at real positions, latent slots included
    targets: torch.Tensor     # (B, T) the token each position predicts, -1 where none (ignored by the CE)
    latent_in: torch.Tensor   # (B, T) True where a latent is fed as the input embedding (the slots)
    latent_out: torch.Tensor  # (B, T) True where the latent head predicts the latent fed next (the slot's predecessor)
    eot_at: torch.Tensor      # (B,) the position whose next token is <|eot|>
    chain: torch.Tensor       # (B, L) the text chains, right-padded with <|pad|> (CoLaR SFT compresses them)
    chain_mask: torch.Tensor  # (B, L) True at real chain tokens

    def to(self, device):
        return Batch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def rows(self, i):
        """The rows i (indices, a slice or a mask) of every field."""
        return Batch(**{f.name: getattr(self, f.name)[i] for f in fields(self)})


def layout(tok, examples, c, latent=False, n_latents=None, closed=None):
    """Lay out encoded examples (question ids, chain ids, answer ids) as a Batch.

    latent=False: the chain is written out in text (c = 1 for CoT, c = 0 with an empty chain for No-CoT).
    latent=True:  the chain becomes latent slots, ceil(L / c) of them, or n_latents[i] for row i (RL's replay of
                  sampled chains). closed[i] = False leaves row i's answer without <|eos|> (an unfinished rollout).
    The targets are the next token from the last speed token on, -1 where the next input is a latent: there the
    label is the caller's (a chunk token in SFT; a latent's action in RL)."""
    rows = []
    for i, (q, chain, answer) in enumerate(examples):
        prefix = prompt(tok, q, c)
        if not latent:
            K = len(chain)
        else:
            K = n_latents[i] if n_latents is not None else math.ceil(len(chain) / c)
        middle = [tok.pad] * K if latent else list(chain)
        tail = [tok.eot] + list(answer) + ([tok.eos] if closed is None or closed[i] else [])
        rows.append((prefix + middle + tail, len(prefix), K, chain))
    B = len(rows)
    T = max(len(seq) for seq, *_ in rows) - 1  # the last token is only ever predicted
    L = max([1] + [len(chain) for *_, chain in rows])
    b = Batch(idx=torch.full((B, T), tok.pad), mask=torch.zeros(B, T, dtype=torch.bool),
              targets=torch.full((B, T), -1), latent_in=torch.zeros(B, T, dtype=torch.bool),
              latent_out=torch.zeros(B, T, dtype=torch.bool), eot_at=torch.zeros(B, dtype=torch.long),
              chain=torch.full((B, L), tok.pad), chain_mask=torch.zeros(B, L, dtype=torch.bool))
    for i, (seq, P, K, chain) in enumerate(rows):
        n = len(seq) - 1
        b.idx[i, :n] = torch.tensor(seq[:-1])
        b.mask[i, :n] = True  # by length: a sampled answer may hold the pad token itself
        b.targets[i, P - 2:n] = torch.tensor(seq[P - 1:])
        if latent:
            b.latent_in[i, P:P + K] = True
            b.latent_out[i, P - 1:P + K - 1] = True
            b.targets[i, P - 1:P + K - 1] = -1
        b.eot_at[i] = P + K - 1
        b.chain[i, :len(chain)] = torch.tensor(chain, dtype=torch.long)
        b.chain_mask[i, :len(chain)] = True
    return b


# --- the CoLaR loss ------------------------------------------------------------------------------------------------
def latent_targets(z, b, eot_emb):
    """What the latent head learns in a CoLaR batch: the next compressed embedding at each latent_out position and the
    <|eot|> embedding at eot_at. z (N, C): the batch's compressed embeddings, row by row. Returns target (B, T, C),
    detached, and the positions the latent loss covers (B, T)."""
    B, T = b.idx.shape
    rows = torch.arange(B, device=z.device)
    target = z.new_zeros(B, T, z.size(-1)).masked_scatter(b.latent_out[..., None], z.detach())
    target[rows, b.eot_at] = eot_emb.detach()
    covered = b.latent_out.clone()
    covered[rows, b.eot_at] = True
    return target, covered


def colar_loss(model, head, b, c, eot_id, generator, pool="sqrt", kind="soft_mse", alpha=0.0, chunk_labels=True,
               self_feed=0.0):
    """CE and latent loss of a CoLaR batch (a Batch with latent=True, on the model's device). Random draws, in this
    order, from `generator`: the self-feed choices, the chunk labels, the soft-MSE's noise. In training mode the
    latent head's scale first takes in this batch's targets. Returns (ce, latent loss, stats: the mean target norm
    and the mean sigma)."""
    z, zmask, chunk_ids = compress(model.wte(b.chain), b.chain, b.chain_mask, c, pool)  # (B, K, C), (B, K), (B, K, c)
    z = z[zmask]  # (N, C): one per latent slot, row by row
    target, covered = latent_targets(z, b, model.wte.weight[eot_id])
    feed = None
    if head.training:
        head.update_scale(target, covered)
        if self_feed > 0:
            feed = torch.rand(len(z), 1, generator=generator, device=z.device) < self_feed
    targets = b.targets
    if chunk_labels:  # one token drawn uniformly from the next chunk, redrawn every step
        targets = targets.masked_scatter(b.latent_out, sample_chunk_labels(chunk_ids, generator)[zmask])
    eps = None
    if kind == "soft_mse" and not head.deterministic:
        eps = torch.randn(target.shape, generator=generator, device=z.device)[covered]
    x = model.wte(b.idx).masked_scatter(b.latent_in[..., None], z)  # compressed embeddings in the slots
    if feed is not None:
        x = feed_own_latents(model, head, x, b, feed)
    _, ce, h = model(embeds=x, mask=b.mask, targets=targets)
    target = target[covered]  # (M, C): the latent head runs only where the loss looks
    with full_precision(h.device):  # the head in fp32, as it decodes and as RL scores it (the model: bf16 on CUDA)
        lat, log_sigma = latent_loss(head, h[covered].float(), target.float(), kind, alpha, eps)
    stats = {"norm": target.norm(dim=-1).mean().item(), "sigma": log_sigma.exp().mean().item()}
    return ce, lat, stats


def feed_own_latents(model, head, x, b, feed):
    """Exposure to the model's own latents: a teacher-forced pass without gradient gives the head's prediction of
    every compressed embedding; the latent inputs chosen by `feed` (one bool per slot, row-major) are replaced by
    those predictions, detached. The targets stay the true next chunks, so the model learns to continue from its
    own, imperfect latents."""
    with torch.no_grad():
        _, _, h = model(embeds=x, mask=b.mask)
        with full_precision(h.device):
            mu, _ = head(h.float())
        pred = (mu * head.scale)[b.latent_out]  # (N, C): the prediction made just before each latent input
    return x.masked_scatter(b.latent_in[..., None], torch.where(feed, pred, x[b.latent_in]))


def sft_loss(model, head, b, c, eot_id, generator, **opts):
    """The SFT loss of a batch: (ce, latent loss, stats). Without a latent head (cot, nocot) the CE alone."""
    if head is None:
        _, ce, _ = model(b.idx, mask=b.mask, targets=b.targets)
        return ce, torch.zeros((), device=ce.device), {}
    return colar_loss(model, head, b, c, eot_id, generator, **opts)


# --- RL: the objective over sampled latent chains (train_rl.py's docstring states it whole) -------------------------
LOG_RATIO_MAX = 10.0  # |log rho| is clamped to this before exp()


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


def replay_batch(tok, questions, outs, c, device):
    """The teacher-forced replay of rollouts: colar.layout with each rollout's own number of latents, targets kept
    only at the answer actions (the <|eot|> decision, unless the latent cap forced it, the answer tokens and
    <|eos|> when it was reached), and the latents each rollout fed, in their slots. Returns (Batch, latents (N, T, C)),
    or (None, None) for no rollouts."""
    if not outs:
        return None, None
    examples = [(tok.encode(q), [], o["answer"]) for q, o in zip(questions, outs)]
    b = layout(tok, examples, c, latent=True, n_latents=[o["n_latents"] for o in outs],
                     closed=[o["finished"] for o in outs])
    first = b.eot_at + torch.tensor([o["hit_cap"] for o in outs], dtype=torch.long)  # a forced <|eot|>: no action
    b.targets[torch.arange(b.idx.size(1))[None] < first[:, None]] = -1
    fed = [z for o in outs for z in o["latents"]]
    lat = torch.zeros(*b.idx.shape, fed[0].numel() if fed else 1, dtype=fed[0].dtype if fed else torch.float32)
    if fed:
        lat[b.latent_in] = torch.stack(fed)
    return b.to(device), lat.to(device)


def action_log_probs(model, head, b, lat, stop_id=None):
    """Log-probabilities of every action of a replay batch, in one teacher-forced pass. Returns logp (N, T): at
    latent_out the Gaussian log-density (mean over dimensions) of the latent produced there, at the answer actions
    (targets != -1) the log-prob of the token produced there, 0 elsewhere; and the mean sigma over the latents.
    With stop_id (the <|eot|> id), a latent's action also holds the decision not to stop, made at the same
    position: its log-prob gains log(1 - p(stop_id))."""
    x = torch.where(b.latent_in[..., None], lat.to(model.wte.weight.dtype), model.wte(b.idx))
    with autocast(x.device):  # the model in bf16 on CUDA (fp32 elsewhere); the head and log-densities in fp32
        logits, _, h = model(embeds=x, mask=b.mask)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # at least fp32 (bf16 on GPU)
    mu, log_sigma = head(h[b.latent_out])  # (M, C), in the head's own dtype
    lat_logp = gaussian_log_prob(head.normalise(lat[b.latent_in]), mu, log_sigma)  # row-major, as latent_out
    if stop_id is not None:  # log(1 - p(stop)) = logsumexp over the other tokens - logsumexp over all, stably
        slot_logits = logits[b.latent_out]
        others = slot_logits.clone()
        others[:, stop_id] = float("-inf")
        lat_logp = lat_logp + (others.logsumexp(-1) - slot_logits.logsumexp(-1)).to(lat_logp.dtype)
    acts = b.targets != -1
    tok_logp = F.log_softmax(logits[acts], dim=-1).gather(1, b.targets[acts][:, None]).squeeze(1)
    logp = torch.zeros(b.idx.shape, device=x.device, dtype=mu.dtype)
    logp = logp.masked_scatter(b.latent_out, lat_logp).masked_scatter(acts, tok_logp.to(logp.dtype))
    sigma = log_sigma.exp().mean() if log_sigma.numel() else torch.zeros((), device=x.device)
    return logp, sigma


def rl_loss(model, head, b, lat, logp_old, adv, cfg, stop_id=None):
    """The loss of some rollouts (a minibatch, or a process's share of one) and the mean sigma of their latents.
    No rollouts (a process's share ran out): 0 through every parameter, so DDP still averages every gradient."""
    if adv.numel() == 0:
        zero = sum(p.sum() for m in (model, head) for p in m.parameters()) * 0.0
        return zero, zero.detach()
    logp, sigma = action_log_probs(model, head, b, lat, stop_id)
    per_action = clipped_surrogate(logp, logp_old, adv[:, None], cfg.clip_eps)
    return aggregate(per_action, b.latent_out, b.targets != -1, cfg.length_average), sigma

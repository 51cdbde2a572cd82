"""
The latent head: from the model's final hidden state, a diagonal Gaussian over the next compressed embedding.

    h -> Linear(C, H) -> GELU -> Linear(H, H) -> LayerNorm(H) -> (mu, log_sigma), each Linear(H, C)

It works in a normalised space: targets are compressed embeddings divided by a scale s, and a sample z is multiplied
by s before it is fed back as an input embedding. s is derived from the model's own embedding table: it is a running
average (momentum 0.01, like BatchNorm's statistics) of the root-mean-square entry of the latent targets, which are
sums of embedding-table rows, so it follows the table as training changes it and is a fixed buffer at inference.
(The authors hard-code a constant per base model; a plain std of the whole table would be dominated by rows of
tokens the data never uses.)

Losses (each a mean over the C dimensions, then a mean over the supervised positions):
- soft-MSE: MSE(mu + sigma * eps, target) - alpha * entropy, one reparameterised sample; its expectation is
  (mu - target)^2 + sigma^2, so with alpha = 0 sigma is pushed towards 0;
- NLL: the negative Gaussian log-density of the target;
- deterministic head (the DL ablation): plain MSE(mu, target); sampling returns mu (sigma unused).
"""
import math

import torch
import torch.distributed as dist
import torch.nn as nn

LOG_SIGMA_MIN, LOG_SIGMA_MAX = -10.0, 2.0  # keeps exp() and the log-density finite
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def log_sigma_floor(sigma_min):
    """The lowest log sigma a head with floor sigma_min (0: none) may output."""
    return max(LOG_SIGMA_MIN, math.log(sigma_min)) if sigma_min > 0 else LOG_SIGMA_MIN


class LatentHead(nn.Module):
    def __init__(self, n_embd, hidden=0, deterministic=False, momentum=0.01, sigma_min=0.0):
        super().__init__()
        H = hidden or n_embd
        self.deterministic, self.momentum = deterministic, momentum
        # a floor on sigma (0: none), a clamp: below it sigma is the floor and gets no gradient. RL sets one: the
        # SFT loss drives sigma to ~1e-4, where sampling explores nothing and the log-density of a latent explodes
        # as soon as mu moves (train_rl.py)
        self.log_sigma_min = log_sigma_floor(sigma_min)
        self.net = nn.Sequential(nn.Linear(n_embd, H), nn.GELU(), nn.Linear(H, H), nn.LayerNorm(H))
        self.mu = nn.Linear(H, n_embd)
        self.log_sigma = nn.Linear(H, n_embd)
        self.register_buffer("scale", torch.zeros(()))  # 0 until the first update_scale()

    def forward(self, h):
        """h (..., C) -> mu (..., C), log_sigma (..., C), in the normalised space. h is first cast to the head's own
        dtype (a bf16 hidden state from an autocast model pass gives fp32 outputs, unless autocast is on here too)."""
        a = self.net(h.to(self.mu.weight.dtype))
        log_sigma = self.log_sigma(a).clamp(self.log_sigma_min, LOG_SIGMA_MAX)
        if self.deterministic:
            log_sigma = torch.full_like(log_sigma, LOG_SIGMA_MIN)
        return self.mu(a), log_sigma

    @torch.no_grad()
    def update_scale(self, targets, mask):
        """Fold the RMS entry of the (unnormalised) targets at the positions in `mask` into the running scale; under
        torchrun, the RMS over every process's targets, so the processes keep one scale."""
        sq = torch.stack([targets[mask].float().pow(2).sum(), torch.tensor(mask.sum().item() * targets.size(-1),
                                                                           dtype=torch.float32, device=targets.device)])
        if dist.is_initialized():
            dist.all_reduce(sq)
        rms = (sq[0] / sq[1]).sqrt()
        if not torch.isfinite(rms) or sq[1] == 0:
            return
        if self.scale == 0:
            self.scale.copy_(rms)
        else:
            self.scale.mul_(1 - self.momentum).add_(self.momentum * rms)

    def normalise(self, e):
        return e / self.scale.clamp(min=1e-8)

    def sample(self, h, temperature=1.0, generator=None):
        """The next latent, in embedding space (to feed back): z ~ N(mu, (sigma * temperature)^2), times the scale;
        temperature 0 gives mu."""
        mu, log_sigma = self(h)
        z = mu
        if temperature > 0 and not self.deterministic:
            eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
            z = mu + log_sigma.exp() * temperature * eps
        return z * self.scale


def gaussian_log_prob(z, mu, log_sigma):
    """log N(z; mu, sigma^2), averaged over the last (embedding) dimension: (..., C) -> (...)."""
    return (-0.5 * ((z - mu) / log_sigma.exp()).pow(2) - log_sigma - HALF_LOG_2PI).mean(-1)


def gaussian_entropy(log_sigma):
    """Entropy of N(mu, sigma^2) per dimension, averaged over the last dimension: 0.5 * log(2 pi e sigma^2)."""
    return (log_sigma + HALF_LOG_2PI + 0.5).mean(-1)


def soft_mse_loss(mu, log_sigma, target, eps, alpha=0.0):
    """MSE of one reparameterised sample mu + sigma * eps (eps: standard normal noise, shaped like mu) against the
    target, minus alpha times the entropy."""
    z = mu + log_sigma.exp() * eps.to(mu.dtype)
    return ((z - target).pow(2).mean(-1) - alpha * gaussian_entropy(log_sigma)).mean()


def nll_loss(mu, log_sigma, target):
    return -gaussian_log_prob(target, mu, log_sigma).mean()


def mse_loss(mu, target):
    """The deterministic head's loss (DL ablation)."""
    return (mu - target).pow(2).mean(-1).mean()


def latent_loss(head, h, target, kind="soft_mse", alpha=0.0, eps=None):
    """The latent loss of `kind` (soft_mse, nll) for hidden states h (N, C) and unnormalised targets (N, C), a mean
    over the N positions; a deterministic head always uses plain MSE. soft_mse needs its noise eps (N, C).
    Returns (loss, log_sigma)."""
    mu, log_sigma = head(h)
    target = head.normalise(target.detach())  # no gradient into the embedding table through the target
    if head.deterministic:
        return mse_loss(mu, target), log_sigma
    if kind == "nll":
        return nll_loss(mu, log_sigma, target), log_sigma
    if kind == "soft_mse":
        return soft_mse_loss(mu, log_sigma, target, eps, alpha), log_sigma
    raise ValueError(f"latent loss must be soft_mse or nll, got {kind!r}")

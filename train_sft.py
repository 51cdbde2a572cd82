"""
Supervised training of the small GPT on GSM8K-Aug-format data: explicit CoT, No-CoT, or CoLaR's compressed latents.

Modes (the sequence each example becomes):
- cot:   [question] <|speed|> 1 <|bot|> [chain] <|eot|> [answer] <|eos|>        (explicit chain of thought)
- nocot: [question] <|speed|> 0 <|bot|> <|eot|> [answer] <|eos|>                (answer at once)
- colar: [question] <|speed|> c <|bot|> [ceil(L/c) compressed embeddings] <|eot|> [answer] <|eos|>
  with c drawn from --c_values (default 1..c_max) once per step for the whole batch. The LM head is trained with
  cross-entropy everywhere after the question; at <|bot|> and at each compressed position its label is one token drawn
  uniformly from the next chunk (redrawn every step), and <|eot|> after the last chunk. The latent head (latent_head.py)
  learns to predict the next compressed embedding there, and the <|eot|> embedding after the last chunk. Loss:
  CE + latent_weight * latent loss. Ablations: --pool mean (MP), --latent_loss nll (NLL), --deterministic true (DL),
  --chunk_labels false (OC: no chunk labels; the <|eot|> label that drives the stop decision is kept).

    python train_sft.py                                   # CoT on the synthetic task (data/synth), ~5 minutes on CPU
    python train_sft.py --mode nocot --out_dir out/nocot  # the No-CoT baseline
    python train_sft.py --mode colar --init_from out/cot --out_dir out/colar   # CoLaR, starting from the CoT model
    python train_sft.py --resume true                     # continue out/cot from its latest checkpoint, exactly
    python train_sft.py --data_dir data/gsm8k --tokenizer gpt2 --out_dir out/gsm8k_cot --max_steps 400
    python train_sft.py --data_dir data/gsm8k --tokenizer gpt2 --init_from gpt2 --out_dir out/gsm8k_gpt2 --lr 1e-4
                                                          # from pretrained GPT-2 (pip install transformers)
    torchrun --standalone --nproc_per_node=8 train_sft.py --batch_size 8   # 8 GPUs, 8 x 8 = 64 sequences per step

Several processes (torchrun, DistributedDataParallel): each optimizer step takes --total_batch_size sequences (0: one
--batch_size per process), as --batch_size sequences per process per micro-step over total / (batch_size x processes)
micro-steps. Every process draws the same whole batch, the same c and the same random numbers (prepare_colar_batch),
then trains on its own rows; each slice's losses are weighted by its share of the batch's positions, so the gradient
is the whole batch's, and the run follows the one-process run with batch_size = total_batch_size (dropout aside: its
masks come from each process's own generator). Process 0 prints, validates and writes the checkpoints.
"""
import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, replace

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from common import (UserError, autocast, barrier, cleanup_distributed, load_checkpoint, parse_config, print0,
                    print_config, read_pointer, run_cli, save_checkpoint, setup_distributed)
from compress import compress, sample_chunk_labels
from data.format import chain_text, read_split
from evaluate import score
from latent_head import LatentHead, latent_loss
from model import GPT, GPTConfig
from tokenizer import KINDS, Tokenizer


@dataclass
class TrainConfig:
    # data
    data_dir: str = "data/synth"   # folder with train.txt and val.txt in GSM8K-Aug format
    mode: str = "cot"              # cot (question -> chain -> answer), nocot (question -> answer) or colar
    tokenizer: str = "char"        # char, number (whole numbers as tokens) or gpt2 (BPE reduced to the data's ids)
    number_digits: int = 3         # for tokenizer=number: digits per number token
    # model
    n_layer: int = 4               # transformer blocks
    n_head: int = 4                # attention heads
    n_embd: int = 128              # model width
    dropout: float = 0.0           # dropout rate
    pos_emb: str = "rope"          # rope or learned
    block_size: int = 0            # context length; 0: room for the longest example and for the longest question
                                   # with max_latents latents and an answer (as RL samples them), plus 32
    # CoLaR (mode colar)
    init_from: str = ""            # CoT run or checkpoint, or gpt2[-medium|-large|-xl]; its tokenizer and size win
    c_max: int = 5                 # compression factors 1..c_max are trained
    c_values: str = ""             # or exactly these, comma-separated (e.g. 1,3,5; repeats weight the draw)
    pool: str = "sqrt"             # sqrt (sum / sqrt(n), CoLaR) or mean (the MP ablation)
    latent_loss: str = "soft_mse"  # soft_mse or nll
    latent_alpha: float = 0.0      # entropy weight of the soft-MSE loss
    latent_weight: float = 10.0    # weight of the latent loss beside the CE (1 in the paper; 10 measured best here)
    latent_hidden: int = 0         # latent head width (0: n_embd)
    deterministic: bool = False    # deterministic latent head (the DL ablation)
    chunk_labels: bool = True      # CE labels drawn from the next chunk (false: the OC ablation)
    self_feed: float = 0.0         # fraction of latent inputs replaced by the head's own detached predictions
    max_latents: int = 64          # cap on latents at inference (validation)
    # optimisation
    batch_size: int = 64           # sequences per forward pass, on each process
    total_batch_size: int = 0      # sequences per optimizer step, over processes and micro-steps (0: batch_size each)
    max_steps: int = 1200          # training steps (the LR schedule spans them)
    lr: float = 2e-3               # peak learning rate
    min_lr: float = 1e-4           # learning rate at the end of the cosine decay
    warmup_steps: int = 100        # linear warm-up steps
    weight_decay: float = 0.1      # AdamW weight decay on matrices
    grad_clip: float = 1.0         # clip the gradient norm to this (0: off)
    # bookkeeping
    out_dir: str = "out/cot"       # checkpoints go here
    eval_every: int = 500          # validate and save a checkpoint every this many steps (and at the end)
    eval_n: int = 500              # validation examples used for model selection (0: all)
    keep_last: int = 3             # step checkpoints kept (the best by validation is always kept)
    log_every: int = 10            # print a progress line every this many steps
    stop_at: int = 0               # stop (with a checkpoint) at this step, to --resume later; 0: run to max_steps
    resume: bool = False           # continue from out_dir's latest checkpoint
    seed: int = 1337               # seeds the weights, the data order and every random draw
    device: str = "auto"           # auto, cpu, cuda, mps


SHAPE_KEYS = ("tokenizer", "number_digits", "n_layer", "n_head", "n_embd", "pos_emb")  # fixed by --init_from


def get_lr(step, cfg):
    """Linear warm-up from 0 to lr over warmup_steps, then cosine decay to min_lr at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def example_texts(question, steps, answer, mode):
    """The three pieces of text of an example that are encoded separately; the chain is empty in nocot mode."""
    return question, "" if mode == "nocot" else chain_text(steps), " " + answer


def encode_examples(tok, examples, mode):
    """(question, steps, answer) -> (question ids, chain ids, answer ids)."""
    return [tuple(tok.encode(t) for t in example_texts(*ex, mode)) for ex in examples]


def build_tokenizer(cfg, examples):
    """The tokenizer of cfg; a reduced GPT-2 vocabulary keeps exactly the ids of the pieces encode_examples encodes
    (BPE gives `<<` at the start of a piece and ` <<` inside a text different ids) and of the speed prompt."""
    texts = [t for ex in examples for t in example_texts(*ex, cfg.mode)] + [str(c) for c in range(10)]
    return Tokenizer.build(cfg.tokenizer, texts, cfg.number_digits)


def make_batch(tok, encoded, c):
    """Right-padded training batch. Returns idx (B, T), targets (B, T) with -1 where nothing is predicted, mask (B, T)."""
    c_ids = tok.encode(str(c))
    seqs, firsts = [], []
    for q, chain, ans in encoded:
        prompt = q + [tok.speed] + c_ids + [tok.bot]
        seqs.append(prompt + chain + [tok.eot] + ans + [tok.eos])
        firsts.append(len(prompt) - 2)  # the last speed token predicts <|bot|>; everything after is supervised
    T = max(len(s) for s in seqs) - 1
    idx = torch.full((len(seqs), T), tok.pad, dtype=torch.long)
    targets = torch.full((len(seqs), T), -1, dtype=torch.long)
    for i, (s, f) in enumerate(zip(seqs, firsts)):
        s = torch.tensor(s, dtype=torch.long)
        idx[i, :len(s) - 1] = s[:-1]
        targets[i, f:len(s) - 1] = s[f + 1:]
    mask = idx != tok.pad
    return idx, targets, mask


def make_colar_batch(tok, encoded, c):
    """A right-padded CoLaR batch, before compression: each row is
    prompt (P tokens, ending in <|bot|>) | K = ceil(L / c) latent slots | <|eot|> answer <|eos|>.
    Returns a dict of tensors:
      idx (B, T) token ids (pad at the latent slots), mask (B, T) real positions (latent slots included),
      targets (B, T) CE labels, -1 where none (yet): the chunk labels are drawn per step in colar_loss,
      latent_in (B, T) the latent slots, slot (B, T) <|bot|> and every latent slot but the last (they predict the next
      chunk), eot_at (B,) the position that predicts <|eot|> (the last latent slot, or <|bot|> for an empty chain),
      chain (B, L) the chain's token ids, right-padded, and chain_mask (B, L)."""
    c_ids = tok.encode(str(c))
    rows = []
    for q, chain, ans in encoded:
        prompt, post = q + [tok.speed] + c_ids + [tok.bot], [tok.eot] + ans + [tok.eos]
        rows.append((prompt, -(-len(chain) // c), post, chain))
    B = len(rows)
    T = max(len(p) + K + len(post) for p, K, post, _ in rows) - 1
    L = max(1, max(len(ch) for *_, ch in rows))
    b = {"idx": torch.full((B, T), tok.pad), "targets": torch.full((B, T), -1),
         "latent_in": torch.zeros(B, T, dtype=torch.bool), "slot": torch.zeros(B, T, dtype=torch.bool),
         "eot_at": torch.zeros(B, dtype=torch.long), "chain": torch.full((B, L), tok.pad),
         "chain_mask": torch.zeros(B, L, dtype=torch.bool)}
    for i, (prompt, K, post, chain) in enumerate(rows):
        P = len(prompt)
        seq = prompt + [tok.pad] * K + post
        n = len(seq) - 1
        b["idx"][i, :n] = torch.tensor(seq[:-1])
        b["targets"][i, P - 2] = tok.bot                    # the speed prompt predicts <|bot|>
        b["targets"][i, P + K - 1] = tok.eot                # the last latent (or <|bot|>) predicts <|eot|>
        b["targets"][i, P + K:n] = torch.tensor(post[1:])   # <|eot|> and the answer predict the answer and <|eos|>
        b["latent_in"][i, P:P + K] = True
        b["slot"][i, P - 1:P + K - 1] = True
        b["eot_at"][i] = P + K - 1
        b["chain"][i, :len(chain)] = torch.tensor(chain, dtype=torch.long)
        b["chain_mask"][i, :len(chain)] = True
    b["mask"] = (b["idx"] != tok.pad) | b["latent_in"]
    return b


def latent_targets(model, b, c, pool, eot_id):
    """The latent head's targets in a CoLaR batch: the next compressed embedding at each slot, the <|eot|> embedding
    after the last chunk. Returns target (B, T, C), detached, lmask (B, T), the positions the latent loss covers,
    and chunk_ids (B, K, c), the token ids of each chunk."""
    with torch.no_grad():
        z, zmask, chunk_ids = compress(model.wte(b["chain"]), b["chain"], b["chain_mask"], c, pool)
        B, T = b["idx"].shape
        rows = torch.arange(B, device=z.device)
        target = z.new_zeros(B, T, z.size(-1)).masked_scatter(b["slot"][..., None], z[zmask])
        target[rows, b["eot_at"]] = model.wte.weight[eot_id]
    lmask = b["slot"].clone()
    lmask[rows, b["eot_at"]] = True
    return target, lmask, chunk_ids


def prepare_colar_batch(model, head, b, c, eot_id, cfg, generator):
    """What a CoLaR step does once for its whole batch, before the batch is split over processes and micro-steps:
    lay out the latent targets (b["target"], b["lmask"]), let the latent head's running scale take them in, and make
    the step's random draws: self-feed choices b["feed"] (B, T), chunk labels b["labels"] (B, K), the soft-MSE's
    latent noise b["eps"] (B, T, C). Stored by row, they travel with the rows (take_rows), so any split of the batch
    trains on the numbers one process with the whole batch would draw. Returns a new dict."""
    b = dict(b)
    b["target"], b["lmask"], chunk_ids = latent_targets(model, b, c, cfg.pool, eot_id)
    if head.training:
        head.update_scale(b["target"], b["lmask"])
        if cfg.self_feed > 0:
            n = int(b["latent_in"].sum())
            pick = torch.rand(n, 1, generator=generator, device=b["target"].device)[:, 0] < cfg.self_feed
            b["feed"] = torch.zeros_like(b["latent_in"]).masked_scatter(b["latent_in"], pick)
    if cfg.chunk_labels:
        b["labels"] = sample_chunk_labels(chunk_ids, generator)
    if cfg.latent_loss == "soft_mse" and not head.deterministic:
        b["eps"] = torch.randn(b["target"].shape, generator=generator, device=b["target"].device)
    return b


def colar_loss(model, head, b, c, eot_id, cfg, generator=None):
    """CE and latent loss of a CoLaR batch from make_colar_batch (tensors on the model's device). Either b went
    through prepare_colar_batch (then it may be any rows of it, from take_rows) and brings its targets and the
    step's random draws, or a generator is given and b is a whole batch, prepared here. The latent head runs only
    where the latent loss looks (b["lmask"]). Returns (ce, latent, stats) where stats holds the mean latent-target
    norm and the head's mean sigma."""
    if generator is not None:
        b = prepare_colar_batch(model, head, b, c, eot_id, cfg, generator)
    z, zmask, _ = compress(model.wte(b["chain"]), b["chain"], b["chain_mask"], c, cfg.pool)  # (B, K, C)
    x = model.wte(b["idx"]).masked_scatter(b["latent_in"][..., None], z[zmask])  # compressed embeddings in the slots
    if head.training and cfg.self_feed > 0:
        x = self_feed(model, head, x, b, cfg.self_feed)
    targets = b["targets"]
    if cfg.chunk_labels:  # one token drawn uniformly from the next chunk, redrawn every step
        targets = targets.masked_scatter(b["slot"], b["labels"][:, :zmask.size(1)][zmask])
    _, ce, h = model(embeds=x, mask=b["mask"], targets=targets, return_hidden=True)
    lmask = b["lmask"]
    target, eps = b["target"][lmask], b["eps"][lmask] if "eps" in b else None  # (N, C): the supervised positions
    every = torch.ones(len(target), dtype=torch.bool, device=target.device)
    lat, _, log_sigma = latent_loss(head, h[lmask], target, every, cfg.latent_loss, cfg.latent_alpha, eps=eps)
    stats = {"norm": target.norm(dim=-1).mean().item(), "sigma": log_sigma.exp().mean().item()}
    return ce, lat, stats


def self_feed(model, head, x, b, p, generator=None):
    """Exposure to the model's own latents: a teacher-forced pass without gradient gives the head's prediction of
    every compressed embedding; each latent input is replaced by that prediction (detached) with probability p (where
    b["feed"] says, when prepare_colar_batch drew the choices). The targets stay the true next chunks, so the model
    learns to continue from its own, imperfect latents."""
    with torch.no_grad():
        _, h = model(embeds=x, mask=b["mask"], return_hidden=True)
        mu, _ = head(h)
        pred = (mu * head.scale)[b["slot"]]  # (N, C): the prediction made at the slot before each latent input
    if "feed" in b:
        pick = b["feed"][b["latent_in"]][:, None]
    else:
        pick = torch.rand(pred.size(0), 1, generator=generator, device=x.device) < p
    fed = torch.where(pick, pred, x[b["latent_in"]])
    return x.masked_scatter(b["latent_in"][..., None], fed)


SEQ_KEYS = ("idx", "targets", "mask", "latent_in", "slot", "feed", "eps", "target", "lmask")  # laid out (B, T, ...)


def take_rows(b, rows):
    """The rows `rows` (a slice) of a batch dict, cut to their own longest sequence: one micro-batch of a process."""
    T = int(b["mask"][rows].sum(1).max())  # mask is a prefix of each row
    return {k: v[rows, :T] if k in SEQ_KEYS else v[rows] for k, v in b.items()}


def loss_counts(b, cfg):
    """(positions the CE averages over, positions the latent loss averages over) in a prepared batch dict. A slice's
    mean losses times its counts over the whole batch's add up, over the slices, to the whole batch's mean losses."""
    n_ce = int((b["targets"] != -1).sum())
    if cfg.mode != "colar":
        return n_ce, 1
    n_slots = int(b["slot"].sum())  # every slot predicts a chunk label, and the latent head predicts there
    return n_ce + (n_slots if cfg.chunk_labels else 0), n_slots + len(b["slot"])  # + the <|eot|> positions


def grad_accum_steps(total_batch_size, batch_size, world_size):
    """Micro-steps per optimizer step, so that batch_size sequences on each of world_size processes per micro-step
    add up to total_batch_size (0: one micro-step, batch_size x world_size sequences)."""
    per_pass = batch_size * world_size
    total = total_batch_size or per_pass
    if total % per_pass:
        raise UserError(f"--total_batch_size {total} is not a multiple of --batch_size {batch_size} x {world_size} "
                        f"process(es) = {per_pass}")
    return total // per_pass


class SFTLoss(torch.nn.Module):
    """The model and (colar) the latent head as one module whose forward is the loss of a micro-batch: the one
    module DistributedDataParallel wraps, so the gradients of both are averaged over the processes.
    Returns (ce, latent loss, stats); the latent loss is 0 and stats empty outside colar mode."""

    def __init__(self, model, head, eot_id, cfg):
        super().__init__()
        self.model, self.head, self.eot_id, self.cfg = model, head, eot_id, cfg

    def forward(self, b, c):
        if self.head is None:
            _, loss = self.model(b["idx"], mask=b["mask"], targets=b["targets"])
            return loss, torch.zeros((), device=loss.device), {}
        return colar_loss(self.model, self.head, b, c, self.eot_id, self.cfg)


def parse_c_values(cfg):
    if cfg.mode != "colar":
        return [1 if cfg.mode == "cot" else 0]
    try:
        values = [int(v) for v in cfg.c_values.split(",") if v.strip()] if cfg.c_values else list(range(1, cfg.c_max + 1))
    except ValueError:
        raise UserError(f"--c_values must be comma-separated integers, got {cfg.c_values!r}") from None
    if not values or min(values) < 1:
        raise UserError(f"compression factors must be >= 1, got {values}")
    return values


def make_optimizer(modules, lr, weight_decay, betas=(0.9, 0.95)):
    """AdamW with weight decay on matrices only (not on biases and LayerNorms), over the modules' parameters."""
    params = list({id(p): p for m in modules for p in m.parameters() if p.requires_grad}.values())
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


class EpochSampler:
    """Batches of example indices: a fresh seeded permutation each epoch, the incomplete tail dropped.
    Its state (epoch, cursor) goes into checkpoints, so a resumed run sees exactly the batches it would have."""

    def __init__(self, n, batch_size, seed):
        if n < batch_size:
            raise UserError(f"the training split has {n} examples, fewer than one batch of {batch_size}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch, self.cursor = 0, 0
        self._perm_epoch, self._perm = None, None

    def next(self):
        if self.cursor + self.batch_size > self.n:
            self.epoch, self.cursor = self.epoch + 1, 0
        if self._perm_epoch != self.epoch:
            g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            self._perm, self._perm_epoch = torch.randperm(self.n, generator=g).tolist(), self.epoch
        batch = self._perm[self.cursor:self.cursor + self.batch_size]
        self.cursor += self.batch_size
        return batch

    def state_dict(self):
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, d):
        self.epoch, self.cursor = d["epoch"], d["cursor"]


def pretrained_start(cfg):
    """GPT-2's weights (cfg.init_from names the size) as a starting point shaped like a checkpoint dict: the full
    GPT-2 vocabulary plus our special tokens, whose new embedding rows GPT.from_hf_gpt2 describes."""
    tok = Tokenizer("gpt2")
    try:
        model = GPT.from_pretrained(cfg.init_from, vocab_size=tok.n_vocab)
    except ImportError as e:
        raise UserError(str(e)) from None
    except OSError as e:  # no network and nothing in Hugging Face's cache
        raise UserError(f"cannot load {cfg.init_from}'s weights from Hugging Face (offline, and not cached?): "
                        f"{str(e).splitlines()[0]}") from None
    m = replace(model.cfg, dropout=cfg.dropout)
    shape = {"tokenizer": "gpt2", "number_digits": cfg.number_digits, "n_layer": m.n_layer, "n_head": m.n_head,
             "n_embd": m.n_embd, "pos_emb": m.pos_emb}
    return {"model": model.state_dict(), "model_config": asdict(m), "config": shape, "tokenizer": tok.spec(),
            "path": f"pretrained {cfg.init_from}"}


def restore_training_state(ckpt, optimizer, sampler, gen):
    """Put the optimizer, the data position and both random generators back as the checkpoint saved them, so a
    resumed run continues exactly. Returns (step, best_val)."""
    if ckpt["rng"]["train"].numel() != gen.get_state().numel():  # a CPU generator's state is not a CUDA one's
        raise UserError(f"{ckpt['path']} was saved on another kind of device than {gen.device}: resume it on the "
                        f"kind it was trained on (--device)")
    optimizer.load_state_dict(ckpt["optimizer"])
    sampler.load_state_dict(ckpt["sampler"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    gen.set_state(ckpt["rng"]["train"])
    print0(f"resumed {ckpt['path']} at step {ckpt['step']}")
    return ckpt["step"], ckpt["best_val"]


def check_config(cfg):
    if cfg.mode not in ("cot", "nocot", "colar"):
        raise UserError(f"--mode must be cot, nocot or colar, got {cfg.mode!r}")
    if cfg.pool not in ("sqrt", "mean"):
        raise UserError(f"--pool must be sqrt or mean, got {cfg.pool!r}")
    if cfg.latent_loss not in ("soft_mse", "nll"):
        raise UserError(f"--latent_loss must be soft_mse or nll, got {cfg.latent_loss!r}")
    if cfg.init_from and cfg.mode != "colar" and cfg.init_from not in GPT.PRETRAINED:
        raise UserError("--init_from a checkpoint is for --mode colar (it starts CoLaR from a CoT run)")
    if cfg.init_from in GPT.PRETRAINED and cfg.tokenizer != "gpt2":
        raise UserError(f"--init_from {cfg.init_from} needs --tokenizer gpt2 (the pretrained model reads GPT-2's ids)")
    if cfg.tokenizer not in KINDS:
        raise UserError(f"--tokenizer must be one of {', '.join(KINDS)}, got {cfg.tokenizer!r}")
    if cfg.pos_emb not in ("rope", "learned"):
        raise UserError(f"--pos_emb must be rope or learned, got {cfg.pos_emb!r}")
    if cfg.n_embd % cfg.n_head:
        raise UserError(f"--n_embd ({cfg.n_embd}) must be divisible by --n_head ({cfg.n_head})")
    for name in ("n_layer", "n_head", "n_embd", "batch_size", "max_steps", "eval_every", "log_every"):
        if getattr(cfg, name) <= 0:
            raise UserError(f"--{name} must be positive, got {getattr(cfg, name)}")
    if cfg.total_batch_size < 0:
        raise UserError(f"--total_batch_size must be >= 0 (0: --batch_size per process), got {cfg.total_batch_size}")
    if not (cfg.lr > 0 and 0 <= cfg.min_lr <= cfg.lr):
        raise UserError(f"need lr > 0 and 0 <= min_lr <= lr, got lr={cfg.lr}, min_lr={cfg.min_lr}")


def main(cfg):
    check_config(cfg)
    c_values = parse_c_values(cfg)
    rank, world, _, device = setup_distributed(cfg.device)  # one process, unless started by torchrun
    accum = grad_accum_steps(cfg.total_batch_size, cfg.batch_size, world)
    cfg = replace(cfg, total_batch_size=accum * world * cfg.batch_size)  # the effective batch, saved and checked
    ckpt = init = None
    if read_pointer(cfg.out_dir, "latest"):
        if not cfg.resume:
            raise UserError(f"{cfg.out_dir} already holds checkpoints: pass --resume true to continue that run, "
                            f"or choose another --out_dir")
        ckpt = load_checkpoint(cfg.out_dir, which="latest")
        if cfg.init_from and cfg.init_from == ckpt["config"]["init_from"]:  # the shape came from the starting model
            cfg = replace(cfg, **{k: ckpt["config"][k] for k in SHAPE_KEYS})
        ckpt["config"].setdefault("total_batch_size", ckpt["config"]["batch_size"])  # saved before the flag existed
        for key in ("mode", "seed", "total_batch_size", "c_max", "c_values", "init_from", "latent_hidden",
                    "deterministic", "pool", "latent_loss", "chunk_labels") + SHAPE_KEYS:
            if ckpt["config"][key] != getattr(cfg, key):
                raise UserError(f"--{key}={getattr(cfg, key)} does not match the checkpoint being resumed "
                                f"({ckpt['config'][key]}): resume with the run's own settings")
    elif cfg.resume:
        raise UserError(f"--resume true, but {cfg.out_dir} holds no checkpoint to resume from")
    elif cfg.init_from:  # the starting model decides the tokenizer and the model's shape
        init = pretrained_start(cfg) if cfg.init_from in GPT.PRETRAINED else load_checkpoint(cfg.init_from)
        cfg = replace(cfg, **{k: init["config"][k] for k in SHAPE_KEYS})
    print_config(cfg)
    train = read_split(os.path.join(cfg.data_dir, "train.txt"))
    val = read_split(os.path.join(cfg.data_dir, "val.txt"))
    base = ckpt or init
    tok = Tokenizer.from_spec(base["tokenizer"]) if base else build_tokenizer(cfg, train + val)
    encoded = encode_examples(tok, train, cfg.mode)
    val = val[:cfg.eval_n] if cfg.eval_n > 0 else val  # the tokenizer saw all of val; selection uses eval_n of it
    if base:
        model_cfg = GPTConfig(**base["model_config"])
    else:
        every = encoded + encode_examples(tok, val, cfg.mode)
        longest = max(max(len(q) + len(ch) + len(a) + 8 for q, ch, a in every),
                      max(len(q) for q, _, _ in every) + cfg.max_latents + 8)
        model_cfg = GPTConfig(vocab_size=tok.n_vocab, block_size=cfg.block_size or longest + 32,
                              n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout,
                              pos_emb=cfg.pos_emb)

    torch.manual_seed(cfg.seed)
    model = GPT(model_cfg).to(device)
    latent_config = {"hidden": cfg.latent_hidden, "deterministic": cfg.deterministic}
    head = LatentHead(model_cfg.n_embd, **latent_config).to(device) if cfg.mode == "colar" else None
    optimizer = make_optimizer([model] + ([head] if head else []), cfg.lr, cfg.weight_decay)
    sampler = EpochSampler(len(encoded), cfg.total_batch_size, cfg.seed)  # whole batches, the same in every process
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)  # draws c, chunk labels, latent noise
    step, best_val = 0, -1.0
    if init:
        model.load_state_dict(init["model"])
        print0(f"initialised from {init['path']}")
    if ckpt:
        model.load_state_dict(ckpt["model"])
        if head:
            head.load_state_dict(ckpt["latent_head"])
        step, best_val = restore_training_state(ckpt, optimizer, sampler, gen)
    if rank == 0:
        os.makedirs(cfg.out_dir, exist_ok=True)
        with open(os.path.join(cfg.out_dir, "tokenizer.json"), "w") as f:  # also inside every checkpoint
            json.dump(tok.spec(), f)
    n_params = model.num_params() + (sum(p.numel() for p in head.parameters()) if head else 0)
    print0(f"{len(train):,} training examples, {len(val):,} validation; vocabulary {tok.n_vocab}; "
           f"{n_params / 1e6:.2f}M parameters; block_size {model_cfg.block_size}; device {device}")
    print0(f"batch: {cfg.total_batch_size} sequences per step = {cfg.batch_size} per pass x {world} process(es) x "
           f"{accum} micro-step(s)")
    trainee = SFTLoss(model, head, tok.eot, cfg)  # checkpoints and validation use model and head themselves
    if world > 1:  # a deterministic head never uses its log_sigma layer: tell DDP to expect unused parameters
        trainee = DDP(trainee, device_ids=[device.index] if device.type == "cuda" else None,
                      find_unused_parameters=bool(head and head.deterministic))

    def checkpoint(step, val_acc, best):
        return save_checkpoint(cfg.out_dir, step, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "model_config": asdict(model_cfg),
            "latent_head": head.state_dict() if head else None, "latent_config": latent_config,
            "config": asdict(cfg), "tokenizer": tok.spec(), "step": step, "sampler": sampler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "train": gen.get_state()}, "best_val": best_val,
            "val_acc": val_acc}, cfg.keep_last, best)

    def validate():
        """Greedy accuracy on the validation examples, averaged over the trained c (latent decoding for colar)."""
        model.eval()
        if head:
            head.eval()
        runs = {c: score(model, tok, val, c, head=head, max_latents=cfg.max_latents) for c in sorted(set(c_values))}
        return sum(r[0] for r in runs.values()) / len(runs), runs

    params = [p for g in optimizer.param_groups for p in g["params"]]
    last = min(cfg.max_steps, cfg.stop_at) if cfg.stop_at > 0 else cfg.max_steps
    history = []  # (step, c, ce, latent) of every step, for the regression test
    first, t_start, t_train, tokens_seen = step, time.time(), 0.0, 0  # t_train: seconds in training steps (no eval)
    while step < last:
        t0 = time.time()
        lr = get_lr(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        c = c_values[int(torch.randint(len(c_values), (1,), generator=gen, device=device))]
        examples = [encoded[i] for i in sampler.next()]  # the step's whole batch, the same in every process
        trainee.train()
        if head:
            b = {k: v.to(device) for k, v in make_colar_batch(tok, examples, c).items()}
            b = prepare_colar_batch(model, head, b, c, tok.eot, cfg, gen)  # the scale update and the step's draws
        else:
            b = dict(zip(("idx", "targets", "mask"), (t.to(device) for t in make_batch(tok, examples, c))))
        n_all, parts = loss_counts(b, cfg), torch.zeros(4, dtype=torch.float64)  # ce, latent, norm, sigma
        optimizer.zero_grad(set_to_none=True)
        for micro in range(accum):  # process `rank` takes the rank-th share of the batch, in `accum` micro-batches
            start = (rank * accum + micro) * cfg.batch_size
            mb = take_rows(b, slice(start, start + cfg.batch_size))
            n = loss_counts(mb, cfg)
            w_ce, w_lat = n[0] / n_all[0], n[1] / n_all[1]  # this slice's shares of the whole batch's means
            sync = world == 1 or micro == accum - 1  # DDP averages the gradients over processes at the last one
            with contextlib.nullcontext() if sync else trainee.no_sync():
                with autocast(device):  # bf16 on CUDA, fp32 elsewhere; the backward pass runs outside it
                    ce, lat, stats = trainee(mb, c)
                    ce, lat = ce * w_ce, lat * w_lat
                    loss = ce + cfg.latent_weight * lat
                (loss * world).backward()  # times world: DDP's average over processes becomes their sum
            parts += torch.tensor([ce.item(), lat.item(), w_lat * stats.get("norm", 0), w_lat * stats.get("sigma", 0)],
                                  dtype=torch.float64)
        if world > 1:  # the whole batch's figures, in every process
            parts = parts.to(device)
            dist.all_reduce(parts)
        ce, lat, norm, sigma = parts.tolist()
        loss = ce + cfg.latent_weight * lat
        if not math.isfinite(loss):  # the same in every process, so all of them stop
            raise UserError(f"loss became {loss} at step {step}: lower --lr; the last good checkpoint is kept")
        history.append((step, c, ce, lat))
        extra = f" | c {c} | ce {ce:.4f} | latent {lat:.4f} | norm {norm:.3f} | sigma {sigma:.4f}" if head else ""
        n_tokens = int(b["mask"].sum())
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        step += 1
        tokens_seen += n_tokens
        t_train += time.time() - t0

        if step % cfg.log_every == 0 or step == last:
            elapsed = time.time() - t_start
            eta = (last - step) * elapsed / (step - first)
            print0(f"step {step}/{cfg.max_steps} | loss {loss:.4f}{extra} | lr {lr:.2e} | "
                   f"{tokens_seen / t_train:,.0f} tok/s | {elapsed / 60:.1f} min | eta {eta / 60:.1f} min", flush=True)
        if step % cfg.eval_every == 0 or step == last:
            if rank == 0:  # validation and checkpoints in process 0; the others wait at the barrier
                acc, runs = validate()
                is_best = acc >= best_val  # ties go to the later, longer-trained checkpoint
                best_val = max(best_val, acc)
                path = checkpoint(step, acc, is_best)
                per_c = " | ".join(f"c={c}: {100 * a:.1f}% len {n:.1f}" for c, (a, n, _) in runs.items())
                print(f"eval step {step}: val accuracy {100 * acc:.1f}% ({per_c}) | best {100 * best_val:.1f}% | "
                      f"saved {path}", flush=True)
            barrier()
    minutes = (time.time() - t_start) / 60
    tps = tokens_seen / max(1e-9, t_train)
    cleanup_distributed()
    print0(f"done: {step} steps in {minutes:.1f} min ({t_train / 60:.1f} min training, {tps:,.0f} tok/s), "
           f"best val accuracy {100 * best_val:.1f}%")
    return {"model": model, "head": head, "tokenizer": tok, "best_val": best_val, "minutes": minutes, "step": step,
            "tokens_per_s": tps, "history": history}


if __name__ == "__main__":
    run_cli(main, parse_config(TrainConfig))

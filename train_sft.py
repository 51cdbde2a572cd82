"""
Supervised training of the small GPT on GSM8K-Aug-format data.

Modes:
- cot:   [question] <|speed|> 1 <|bot|> [chain] <|eot|> [answer] <|eos|>    (explicit chain of thought)
- nocot: [question] <|speed|> 0 <|bot|> <|eot|> [answer] <|eos|>            (answer at once, no chain)
The loss is the cross-entropy of everything after the question: <|bot|> (predicted at the speed prompt), the chain,
<|eot|>, the answer and <|eos|>. Question positions are not supervised.

    python train_sft.py                                   # CoT on the synthetic task (data/synth), CPU, ~10 minutes
    python train_sft.py --mode nocot --out_dir out/nocot  # the No-CoT baseline
    python train_sft.py --resume true                     # continue out/cot from its latest checkpoint, exactly
    python train_sft.py --data_dir data/gsm8k --tokenizer gpt2 --out_dir out/gsm8k_cot --max_steps 2000
"""
import json
import math
import os
import time
from dataclasses import asdict, dataclass

import torch

from common import (UserError, load_checkpoint, parse_config, pick_device, print_config, run_cli, save_checkpoint,
                    _read_pointer)
from data.format import chain_text, read_split
from evaluate import score
from model import GPT, GPTConfig
from tokenizer import KINDS, Tokenizer


@dataclass
class TrainConfig:
    # data
    data_dir: str = "data/synth"   # folder with train.txt and val.txt in GSM8K-Aug format
    mode: str = "cot"              # cot (question -> chain -> answer) or nocot (question -> answer)
    tokenizer: str = "char"        # char, number (whole numbers as tokens) or gpt2 (BPE reduced to the data's ids)
    number_digits: int = 3         # for tokenizer=number: digits per number token
    # model
    n_layer: int = 4               # transformer blocks
    n_head: int = 4                # attention heads
    n_embd: int = 128              # model width
    dropout: float = 0.0           # dropout rate
    pos_emb: str = "rope"          # rope or learned
    block_size: int = 0            # context length; 0: the longest example in the data plus 32
    # optimisation
    batch_size: int = 64           # sequences per step
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


def get_lr(step, cfg):
    """Linear warm-up from 0 to lr over warmup_steps, then cosine decay to min_lr at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def example_texts(question, steps, answer, mode):
    """The three pieces of text of an example that are encoded separately; the chain is empty in nocot mode."""
    return question, chain_text(steps) if mode == "cot" else "", " " + answer


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


def check_config(cfg):
    if cfg.mode not in ("cot", "nocot"):
        raise UserError(f"--mode must be cot or nocot, got {cfg.mode!r}")
    if cfg.tokenizer not in KINDS:
        raise UserError(f"--tokenizer must be one of {', '.join(KINDS)}, got {cfg.tokenizer!r}")
    if cfg.pos_emb not in ("rope", "learned"):
        raise UserError(f"--pos_emb must be rope or learned, got {cfg.pos_emb!r}")
    if cfg.n_embd % cfg.n_head:
        raise UserError(f"--n_embd ({cfg.n_embd}) must be divisible by --n_head ({cfg.n_head})")
    for name in ("n_layer", "n_head", "n_embd", "batch_size", "max_steps", "eval_every", "log_every"):
        if getattr(cfg, name) <= 0:
            raise UserError(f"--{name} must be positive, got {getattr(cfg, name)}")
    if not (cfg.lr > 0 and 0 <= cfg.min_lr <= cfg.lr):
        raise UserError(f"need lr > 0 and 0 <= min_lr <= lr, got lr={cfg.lr}, min_lr={cfg.min_lr}")


def main(cfg):
    check_config(cfg)
    print_config(cfg)
    device = pick_device(cfg.device)
    train = read_split(os.path.join(cfg.data_dir, "train.txt"))
    val = read_split(os.path.join(cfg.data_dir, "val.txt"))

    ckpt = None
    if _read_pointer(cfg.out_dir, "latest"):
        if not cfg.resume:
            raise UserError(f"{cfg.out_dir} already holds checkpoints: pass --resume true to continue that run, "
                            f"or choose another --out_dir")
        ckpt = load_checkpoint(cfg.out_dir, which="latest")
    elif cfg.resume:
        raise UserError(f"--resume true, but {cfg.out_dir} holds no checkpoint to resume from")

    if ckpt:
        tok = Tokenizer.from_spec(ckpt["tokenizer"])
        model_cfg = GPTConfig(**ckpt["model_config"])
        for key in ("mode", "tokenizer", "number_digits", "n_layer", "n_head", "n_embd", "pos_emb", "seed", "batch_size"):
            if ckpt["config"][key] != getattr(cfg, key):
                raise UserError(f"--{key}={getattr(cfg, key)} does not match the checkpoint being resumed "
                                f"({ckpt['config'][key]}): resume with the run's own settings")
    else:
        tok = build_tokenizer(cfg, train + val)
    encoded = encode_examples(tok, train, cfg.mode)
    val = val[:cfg.eval_n] if cfg.eval_n > 0 else val  # the tokenizer saw all of val; selection uses eval_n of it
    if not ckpt:
        longest = max(len(q) + len(ch) + len(a) + 8 for q, ch, a in encoded + encode_examples(tok, val, cfg.mode))
        model_cfg = GPTConfig(vocab_size=tok.n_vocab, block_size=cfg.block_size or longest + 32,
                              n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout,
                              pos_emb=cfg.pos_emb)

    torch.manual_seed(cfg.seed)
    model = GPT(model_cfg).to(device)
    optimizer = model.configure_optimizer(cfg.lr, cfg.weight_decay)
    sampler = EpochSampler(len(encoded), cfg.batch_size, cfg.seed)
    step, best_val = 0, -1.0
    if ckpt:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        sampler.load_state_dict(ckpt["sampler"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        step, best_val = ckpt["step"], ckpt["best_val"]
        print(f"resumed {ckpt['path']} at step {step}")
    c = 1 if cfg.mode == "cot" else 0
    os.makedirs(cfg.out_dir, exist_ok=True)
    with open(os.path.join(cfg.out_dir, "tokenizer.json"), "w") as f:  # also inside every checkpoint
        json.dump(tok.spec(), f)
    print(f"{len(train):,} training examples, {len(val):,} validation; vocabulary {tok.n_vocab}; "
          f"{model.num_params() / 1e6:.2f}M parameters; block_size {model_cfg.block_size}; device {device}")

    def checkpoint(step, val_acc, best):
        return save_checkpoint(cfg.out_dir, step, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "model_config": asdict(model_cfg),
            "config": asdict(cfg), "tokenizer": tok.spec(), "step": step, "sampler": sampler.state_dict(),
            "rng": {"torch": torch.get_rng_state()}, "best_val": best_val, "val_acc": val_acc}, cfg.keep_last, best)

    last = min(cfg.max_steps, cfg.stop_at) if cfg.stop_at > 0 else cfg.max_steps
    first, t_start, t_train, tokens_seen = step, time.time(), 0.0, 0  # t_train: seconds in training steps (no eval)
    while step < last:
        t0 = time.time()
        lr = get_lr(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        idx, targets, mask = (t.to(device) for t in make_batch(tok, [encoded[i] for i in sampler.next()], c))
        model.train()
        _, loss = model(idx, mask=mask, targets=targets)
        if not torch.isfinite(loss):
            raise UserError(f"loss became {loss.item()} at step {step}: lower --lr; the last good checkpoint is kept")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        step += 1
        tokens_seen += int(mask.sum())
        t_train += time.time() - t0

        if step % cfg.log_every == 0 or step == last:
            elapsed = time.time() - t_start
            eta = (last - step) * elapsed / (step - first)
            print(f"step {step}/{cfg.max_steps} | loss {loss.item():.4f} | lr {lr:.2e} | {tokens_seen / t_train:,.0f} tok/s"
                  f" | {elapsed / 60:.1f} min | eta {eta / 60:.1f} min", flush=True)
        if step % cfg.eval_every == 0 or step == last:
            acc, mean_len = score(model.eval(), tok, val, c)
            is_best = acc >= best_val  # ties go to the later, longer-trained checkpoint
            best_val = max(best_val, acc)
            path = checkpoint(step, acc, is_best)
            print(f"eval step {step}: val accuracy {100 * acc:.1f}% | mean chain {mean_len:.1f} tokens | "
                  f"best {100 * best_val:.1f}% | saved {path}", flush=True)
    minutes = (time.time() - t_start) / 60
    tps = tokens_seen / max(1e-9, t_train)
    print(f"done: {step} steps in {minutes:.1f} min ({t_train / 60:.1f} min training, {tps:,.0f} tok/s), "
          f"best val accuracy {100 * best_val:.1f}%")
    return {"model": model, "tokenizer": tok, "best_val": best_val, "minutes": minutes, "step": step,
            "tokens_per_s": tps}


if __name__ == "__main__":
    run_cli(main, parse_config(TrainConfig))

"""
Supervised training of the small GPT on GSM8K-Aug-format data: explicit CoT, No-CoT, or CoLaR's compressed latents.

Modes (the sequence each example becomes; colar.py lays them out and holds the loss):
- cot:   [question] <|speed|> 1 <|bot|> [chain] <|eot|> [answer] <|eos|>        (explicit chain of thought)
- nocot: [question] <|speed|> 0 <|bot|> <|eot|> [answer] <|eos|>                (answer at once)
- colar: [question] <|speed|> c <|bot|> [ceil(L/c) compressed embeddings] <|eot|> [answer] <|eos|>, c drawn from
  --c_values (default 1..c_max) once per step for the whole batch; loss CE + latent_weight * latent loss (colar.py
  says where each is taken). Ablations: --pool mean (MP), --latent_loss nll (NLL), --deterministic true (DL),
  --chunk_labels false (OC: no chunk labels; the layout's <|bot|> and <|eot|> labels are kept, the latter drives the
  stop decision).
- coconut, pause: the latent baselines (baselines.py), a curriculum from the CoT model in --stages stages of
  --stage_steps steps, then every step as thoughts, the optimizer reset at each: [question] <|speed|> 1 <|bot|>
  [thoughts] [steps left] <|eot|> ...
- distill: CODI, one model as teacher (the text chain) and student (stages x c_thought projected thoughts), the
  student's hidden states where the answer's value is predicted pulled towards the teacher's.
- icot: from the CoT model, the chain loses one more leading token every --remove_every steps (the optimizer reset
  at each), until the model answers with no chain; a checkpoint is selected only once the whole chain is gone.

    python train_sft.py                                   # CoT on the synthetic task (data/synth), ~5 minutes on CPU
    python train_sft.py --mode nocot --out_dir out/nocot  # the No-CoT baseline
    python train_sft.py --mode colar --init_from out/cot --out_dir out/colar   # CoLaR, starting from the CoT model
    python train_sft.py --resume true                     # continue out/cot exactly (give the flags it began with)
    python train_sft.py --data_dir data/gsm8k --tokenizer gpt2 --out_dir out/gsm8k_cot --max_steps 400
    python train_sft.py --data_dir data/gsm8k --tokenizer gpt2 --init_from gpt2 --out_dir out/gsm8k_gpt2 --lr 1e-4
                                                          # from pretrained GPT-2 (pip install transformers)
    torchrun --standalone --nproc_per_node=8 train_sft.py --batch_size 8   # 8 GPUs, 8 x 8 = 64 sequences per step

Several processes (torchrun, DistributedDataParallel): each optimizer step takes --total_batch_size sequences (0: one
--batch_size per process). Every process draws the same whole batch and takes its rows rank, rank + processes, ...,
in micro-batches of --batch_size; the loss is divided by the number of micro-steps and DDP averages the gradients over
the processes. c is process 0's draw; chunk labels and latent noise come from each process's own generator (seeded
by rank). Process 0 prints, validates and writes the checkpoints.
"""
import contextlib
import math
import os
import time
from dataclasses import asdict, dataclass, replace

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import colar
from baselines import BASELINES, Curriculum, distill_loss, thinker, thought_loss
from checkpoint import (check_same, finite_model, generator_states, is_pretrained, kept_checkpoint, load_checkpoint,
                        open_run, pretrained_start, read_pointer, release_run, restore_training_state, save_checkpoint,
                        started_from, training_state)
from common import (EpochSampler, Trainee, UserError, all_mean, autocast, barrier, check_flags, cleanup_distributed,
                    get_lr, grad_accum_steps, make_optimizer,
                    parse_config, print0, print_config, run_cli, setup_distributed, wrap_ddp)
from data.format import check_split, read_train_val
from latent_head import LatentHead
from model import GPT, GPTConfig
from sample import score
from tokenizer import KINDS, Tokenizer


@dataclass
class TrainConfig:
    # data
    data_dir: str = "data/synth"   # folder with train.txt and val.txt in GSM8K-Aug format
    mode: str = "cot"              # cot (question -> chain -> answer), nocot (question -> answer), colar, or a
                                   # baseline: coconut, pause, icot, distill (baselines.py)
    tokenizer: str = "char"        # char, number (digit groups), place (digits that know their place) or gpt2
    number_digits: int = 3         # for tokenizer=number: digits per number token
    # model
    n_layer: int = 4               # transformer blocks
    n_head: int = 4                # attention heads
    n_embd: int = 128              # model width
    dropout: float = 0.0           # dropout rate (its masks: process 0's generator state resumed in every process)
    pos_emb: str = "rope"          # rope or learned
    block_size: int = 0            # context length; 0: room for the longest example and for the longest question
                                   # with max_latents latents and an answer (as RL samples them), plus 32; a
                                   # resumed or --init_from model keeps its own
    # CoLaR (mode colar)
    init_from: str = ""            # CoT/CoLaR run, checkpoint, gpt2[-medium|-large|-xl] or GPT-2 folder; its shape wins
    c_max: int = 5                 # compression factors 1..c_max are trained
    c_values: str = ""             # or exactly these, comma-separated (e.g. 1,3,5; repeats weight the draw)
    pool: str = "sqrt"             # sqrt (sum / sqrt(n), CoLaR) or mean (the MP ablation)
    latent_loss: str = "soft_mse"  # soft_mse or nll
    latent_alpha: float = 0.0      # entropy weight of the soft-MSE loss
    latent_weight: float = 10.0    # weight of the latent loss beside the CE (1 in the paper; 10 measured best here)
    latent_hidden: int = 0         # latent head width (0: n_embd)
    deterministic: bool = False    # deterministic latent head (the DL ablation)
    chunk_labels: bool = True      # CE labels drawn from the next chunk (false: the OC ablation)
    self_feed: float = 0.0         # fraction of latent inputs replaced by the head's own predictions (not in the paper)
    max_latents: int = 64          # cap on latents at inference (validation); also sizes a new model's context
    # baselines (baselines.py)
    c_thought: int = 2             # coconut, pause, distill: thoughts per reasoning step replaced
    stages: int = 3                # curriculum stages (stage k: k steps as thoughts), then all as stages x c_thought
    stage_steps: int = 0           # steps per stage, then all steps gone to the end (0: max_steps // (stages + 2))
    remove_every: int = 0          # icot: training steps per removed chain token (0: the whole chain gone at 2/3)
    removal_lambda: float = 4.0    # icot: removal smoothing, P(o more) ~ exp(-lambda o) (0: off)
    distill_weight: float = 20.0   # distill: weight of the teacher-student hidden-state distance
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
RESUME_KEYS = ("mode", "seed", "total_batch_size", "c_max", "c_values", "init_from", "latent_hidden", "deterministic",
               "pool", "latent_loss", "chunk_labels", "c_thought", "stages", "stage_steps", "remove_every",
               "removal_lambda", "distill_weight") + SHAPE_KEYS  # a resumed run keeps these


def parse_c_values(cfg):
    """The speeds a step draws from: 1..c_max or --c_values for colar; 0 for nocot, 1 for the others."""
    if cfg.mode != "colar":
        return [0 if cfg.mode == "nocot" else 1]
    try:
        values = ([int(v) for v in cfg.c_values.split(",") if v.strip()] if cfg.c_values
                  else list(range(1, cfg.c_max + 1)))
    except ValueError:
        raise UserError(f"--c_values must be comma-separated integers, got {cfg.c_values!r}") from None
    if not values or min(values) < 1:
        raise UserError(f"compression factors must be >= 1, got {values}")
    return values


def build_tokenizer(cfg, examples):
    """The tokenizer of cfg; a reduced GPT-2 vocabulary keeps exactly the ids of the pieces colar.encode encodes
    (BPE gives `<<` at the start of a piece and ` <<` inside a text different ids) and of the speed prompt."""
    texts = [t for ex in examples for t in colar.example_texts(*ex, cfg.mode)] + [str(c) for c in range(10)]
    return Tokenizer.build(cfg.tokenizer, texts, cfg.number_digits)


def new_model_config(cfg, tok, encoded):
    """A from-scratch model's config; block_size 0 leaves room for the longest example and for the longest question
    with max_latents latents and an answer (as RL samples them), plus 32."""
    longest = max(max(len(q) + len(ch) + len(a) + 8 for q, ch, a in encoded),
                  max(len(q) for q, _, _ in encoded) + cfg.max_latents + 8)
    return GPTConfig(vocab_size=tok.n_vocab, block_size=cfg.block_size or longest + 32, n_layer=cfg.n_layer,
                     n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout, pos_emb=cfg.pos_emb)


def starting_point(cfg):
    """(cfg, checkpoint to resume or None, starting model to initialise from or None). Resuming or starting from
    another model, that model's tokenizer and shape win over the flags; a --block_size other than its context is
    refused."""
    ckpt = open_run(cfg.out_dir, cfg.resume, "train_sft")
    try:
        if ckpt:
            if cfg.init_from and cfg.init_from == ckpt["config"]["init_from"]:
                cfg = replace(cfg, **{k: ckpt["config"][k] for k in SHAPE_KEYS})
            derived = {k: ckpt["config"].get(k, 0) for k in ("stage_steps", "remove_every") if getattr(cfg, k) == 0}
            cfg = replace(cfg, **derived)  # a baseline's schedule as the run derived it (from its first --max_steps)
            check_block_size(cfg, ckpt, f"the run in {cfg.out_dir}")
            check_same(ckpt["config"], cfg, RESUME_KEYS)
            return cfg, ckpt, None
        if not cfg.init_from:
            return cfg, None, None
        init = (pretrained_start(cfg.init_from, cfg.dropout) if is_pretrained(cfg.init_from)
                else load_checkpoint(cfg.init_from))
        check_block_size(cfg, init, f"--init_from {cfg.init_from}")
        return replace(cfg, **{k: init["config"][k] for k in SHAPE_KEYS}), None, init
    except UserError:
        release_run(cfg.out_dir)  # a refused run leaves the folder as it found it
        raise


def check_block_size(cfg, base, name):
    """A model that exists keeps its context: a --block_size other than its own is refused, not ignored."""
    if cfg.block_size and cfg.block_size != base["model_config"]["block_size"]:
        raise UserError(f"--block_size {cfg.block_size}, but {name} has a context of "
                        f"{base['model_config']['block_size']}: leave --block_size at 0 (the model's own)")


def check_config(cfg):
    check_flags(cfg, dict(mode=("cot", "nocot", "colar") + BASELINES, pool=("sqrt", "mean"),
                          latent_loss=("soft_mse", "nll"),
                          tokenizer=KINDS, pos_emb=("rope", "learned")),
                positive=("n_layer", "n_head", "n_embd", "batch_size", "max_steps", "eval_every", "log_every", "lr",
                          "c_thought", "stages", "number_digits", "c_max"),
                nonnegative=("total_batch_size", "eval_n", "block_size", "max_latents", "min_lr", "dropout",
                             "stage_steps", "remove_every", "removal_lambda", "distill_weight", "latent_hidden",
                             "latent_weight", "latent_alpha", "self_feed", "warmup_steps", "weight_decay",
                             "grad_clip", "keep_last", "stop_at"))
    if cfg.self_feed > 1:
        raise UserError(f"--self_feed is a fraction of the latent inputs, between 0 and 1; got {cfg.self_feed}")
    if cfg.tokenizer == "number" and not 2 <= cfg.number_digits <= 4:
        raise UserError(f"--number_digits must be 2, 3 or 4 with --tokenizer number, got {cfg.number_digits}")
    if os.path.isdir(cfg.init_from) and not is_pretrained(cfg.init_from) and not read_pointer(cfg.init_from, "latest"):
        raise UserError(f"--init_from {cfg.init_from} is neither a run folder (no 'latest' pointer) nor GPT-2 in "
                        f"Hugging Face's layout (no config.json)")
    if cfg.init_from and cfg.mode in ("cot", "nocot") and not is_pretrained(cfg.init_from):
        raise UserError("--init_from a checkpoint is for --mode colar or a baseline (they start from a CoT run)")
    if is_pretrained(cfg.init_from) and cfg.tokenizer != "gpt2":
        raise UserError(f"--init_from {cfg.init_from} needs --tokenizer gpt2 (the pretrained model reads GPT-2's ids)")
    if cfg.n_embd % cfg.n_head or cfg.min_lr > cfg.lr or cfg.dropout >= 1:
        raise UserError(f"need --n_embd divisible by --n_head, --min_lr <= --lr and --dropout < 1, got n_embd "
                        f"{cfg.n_embd}, n_head {cfg.n_head}, min_lr {cfg.min_lr}, lr {cfg.lr}, dropout {cfg.dropout}")
    for split in ("train", "val"):  # before a starting model is loaded or downloaded
        check_split(os.path.join(cfg.data_dir, f"{split}.txt"))


def draw_c(c_values, gen, device):
    """This step's speed, drawn by process 0 for every process."""
    c = torch.tensor(c_values[int(torch.randint(len(c_values), (1,), generator=gen, device=device))], device=device)
    if dist.is_initialized():
        dist.broadcast(c, 0)
    return int(c)


def step_batches(cfg, plan, tok, train, encoded, rows, step, c_values, gen, opts, device):
    """A step's c (a baseline's: its stage, or the chain tokens it has removed), this process's micro-batches of the
    examples `rows`, and the keyword arguments of the loss."""
    parts = [rows[i:i + cfg.batch_size] for i in range(0, len(rows), cfg.batch_size)]
    if plan:
        batches = [plan.batch(tok, [train[i] for i in p], [encoded[i] for i in p], step, gen) for p in parts]
        loss_kw = ({"weight": cfg.distill_weight} if cfg.mode == "distill" else {} if plan.thoughts
                   else dict(c=1, eot_id=tok.eot, generator=gen))
        return plan.at(step), batches, loss_kw
    c = draw_c(c_values, gen, device)
    batches = [colar.layout(tok, [encoded[i] for i in p], c, latent=bool(opts)) for p in parts]
    return c, batches, dict(c=c, eot_id=tok.eot, generator=gen, **opts)


def train_step(trainee, optimizer, batches, loss_kw, cfg, device, step):
    """One optimizer step over this process's micro-batches (the loss divided by their number; under DDP the
    gradients are averaged over processes at the last one); trainee(b, **loss_kw) gives each one's losses. Stops,
    before the weights change, when the loss is not finite. Returns the step's mean CE, latent loss, target norm and
    sigma over every process, and the tokens of every process."""
    trainee.train()
    optimizer.zero_grad(set_to_none=True)
    accum = len(batches)
    means, tokens = torch.zeros(4, dtype=torch.float64), 0  # this process's step means; its real positions
    for micro, b in enumerate(batches):
        b = b.to(device)
        sync = micro == accum - 1 or not isinstance(trainee, DDP)
        with contextlib.nullcontext() if sync else trainee.no_sync():
            with autocast(device):  # bf16 on CUDA, fp32 elsewhere; the backward pass runs outside it
                ce, lat, stats = trainee(b, **loss_kw)
                loss = ce + cfg.latent_weight * lat
            (loss / accum).backward()
        means += torch.tensor([ce.item(), lat.item(), stats.get("norm", 0), stats.get("sigma", 0)],
                              dtype=torch.float64) / accum
        tokens += int(b.mask.sum())
    ce, lat, norm, sigma, tokens = all_mean(means.tolist() + [tokens], device)  # means over processes
    if not math.isfinite(ce + lat):  # the same in every process, so all of them stop
        raise UserError(f"loss became {ce + cfg.latent_weight * lat} at step {step + 1}: lower --lr; "
                        f"{kept_checkpoint(cfg.out_dir)}")
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], cfg.grad_clip)
    optimizer.step()
    return ce, lat, norm, sigma, round(tokens * (dist.get_world_size() if dist.is_initialized() else 1))


def validate(model, head, tok, val, c_values, max_latents, thoughts=0, think=None):
    """Greedy accuracy on the validation examples, averaged over the trained c (latent decoding for colar; a
    baseline's fixed number of thoughts), and the per-c figures as text."""
    for m in (model, head, think):
        if m is not None:
            m.eval()
    if thoughts:
        acc, _, _ = score(model, tok, val, thoughts=thoughts, think=think)
        return acc, f"{thoughts} thoughts: {100 * acc:.1f}%"
    runs = {c: score(model, tok, val, c, head=head, max_latents=max_latents) for c in sorted(set(c_values))}
    return (sum(r[0] for r in runs.values()) / len(runs),
            " | ".join(f"c={c}: {100 * a:.1f}% len {n:.1f}" for c, (a, n, _) in runs.items()))


def build_model(cfg, model_cfg, init, device):
    """The model (seeded, or the starting model's weights), for colar a latent head (new, or a starting CoLaR
    model's of the same shape, as in a curriculum over c: a deterministic head takes a Gaussian one's layers and
    leaves its sigma layer unused, so the DL switch at a later stage changes one thing), for pause its thought."""
    torch.manual_seed(cfg.seed)
    model = GPT(model_cfg).to(device)
    latent_config = {"hidden": cfg.latent_hidden, "deterministic": cfg.deterministic}
    head = LatentHead(model_cfg.n_embd, **latent_config).to(device) if cfg.mode == "colar" else None
    think = thinker(cfg.mode, model_cfg.n_embd)
    if init:
        model.load_state_dict(init["model"])
        with_head = (head is not None and init.get("latent_head") and init.get("config", {}).get("mode") == "colar"
                     and (init.get("latent_config") or {}).get("hidden") == cfg.latent_hidden)  # not a baseline's
        if with_head:
            head.load_state_dict(init["latent_head"])
        print0(f"initialised from {init['path']}" + (", its latent head too" if with_head else ""))
    return model, head, think.to(device) if think else None, latent_config


def setup_data(cfg, base):
    """The tokenizer (the starting model's, or a new one), the encoded training examples, the validation examples
    used for selection and the model config (the starting model's, or a new one sized for the data)."""
    train, val = read_train_val(cfg.data_dir)
    tok = Tokenizer.from_spec(base["tokenizer"]) if base else build_tokenizer(cfg, train + val)
    encoded = colar.encode(tok, train, cfg.mode)
    model_cfg = (GPTConfig(**{**base["model_config"], "dropout": cfg.dropout}) if base  # dropout: no weight, this run's
                 else new_model_config(cfg, tok, encoded + colar.encode(tok, val, cfg.mode)))
    return tok, train, encoded, val[:cfg.eval_n] if cfg.eval_n > 0 else val, model_cfg  # the tokenizer saw all val


def check_context(cfg, tok, encoded, c_values, block_size):
    """One line, before training, when the longest training row does not fit the model's context (the text row of
    CoT, No-CoT and a baseline's first stage; CoLaR's row at its smallest c)."""
    latent = cfg.mode == "colar"
    c = min(c_values) if latent else (0 if cfg.mode == "nocot" else 1)
    width = lambda e: len(e[0]) + (math.ceil(len(e[1]) / c) if latent else len(e[1])) + len(e[2])  # noqa: E731
    need = colar.layout(tok, [max(encoded, key=width)], c, latent=latent).idx.size(1)
    if need > block_size:
        where = f"--init_from {cfg.init_from}'s" if cfg.init_from else "--block_size"
        raise UserError(f"the longest training row needs {need} positions, but the model's context is {block_size} "
                        f"({where}): give a larger --block_size (0 sizes it to the data) or shorter examples")


def main(cfg):
    check_config(cfg)
    c_values = parse_c_values(cfg)
    rank, world, _, device = setup_distributed(cfg.device)  # one process, unless started by torchrun
    accum = grad_accum_steps(cfg.total_batch_size, cfg.batch_size, world)
    cfg = replace(cfg, total_batch_size=accum * world * cfg.batch_size)  # the effective batch, saved and checked
    cfg, ckpt, init = starting_point(cfg)
    start = ckpt.get("started_from") if ckpt else started_from(init) if init and "step" in init else None
    print_config(cfg)
    tok, train, encoded, val, model_cfg = setup_data(cfg, ckpt or init)
    check_context(cfg, tok, encoded, c_values, model_cfg.block_size)
    model, head, think, latent_config = build_model(cfg, model_cfg, init, device)
    aside = head if head is not None else think  # the module trained beside the model, if any
    optimizer = make_optimizer([model] + ([aside] if aside is not None else []), cfg.lr, cfg.weight_decay)
    sampler = EpochSampler(len(encoded), cfg.total_batch_size, cfg.seed)  # whole batches, the same in every process
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 1 + rank)  # c, chunk labels, latent noise
    step, best_val, before = 0, -1.0, 0.0  # before: the run's seconds in the processes it resumes
    if ckpt:
        model.load_state_dict(ckpt["model"])
        if aside is not None:
            aside.load_state_dict(ckpt["latent_head"])
        step, best_val = restore_training_state(ckpt, optimizer, sampler, gen)
        before = ckpt.get("seconds", 0.0)
    n_params = model.num_params() + (sum(p.numel() for p in aside.parameters()) if aside is not None else 0)
    print0(f"{len(encoded):,} training examples, {len(val):,} validation; vocabulary {tok.n_vocab}; "
           f"{n_params / 1e6:.2f}M parameters; block_size {model_cfg.block_size}; device {device}\n"
           f"batch: {cfg.total_batch_size} sequences per step = {cfg.batch_size} per pass x {world} process(es) x "
           f"{accum} micro-step(s)")
    # a deterministic head never uses its log_sigma layer: DDP must expect unused parameters
    loss_fn = {"coconut": thought_loss, "pause": thought_loss, "distill": distill_loss}.get(cfg.mode, colar.sft_loss)
    trainee = wrap_ddp(Trainee(model, aside, loss_fn), device, world, bool(head and head.deterministic))
    opts = dict(pool=cfg.pool, kind=cfg.latent_loss, alpha=cfg.latent_alpha, chunk_labels=cfg.chunk_labels,
                self_feed=cfg.self_feed) if head else {}
    plan = Curriculum(cfg, max(len(chain) for _, chain, _ in encoded)) if cfg.mode in BASELINES else None
    if plan:  # the schedule as numbers in the saved config: a run resumed to go further keeps its stages
        cfg = replace(cfg, stage_steps=plan.stage_steps, remove_every=plan.remove_every)

    last = min(cfg.max_steps, cfg.stop_at) if cfg.stop_at > 0 else cfg.max_steps
    probe = torch.tensor([colar.prompt(tok, encoded[0][0], c_values[0])], device=device)  # for finite_model
    history = []  # (step, c, ce, latent loss) of every step
    first, t_start, t_train, tokens_seen = step, time.time(), 0.0, 0  # t_train: seconds in training steps (no eval)
    while step < last:
        t0 = time.time()
        lr = get_lr(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if plan and plan.restarts(step):
            optimizer.state.clear()  # a fresh optimizer at each change of a curriculum, as Coconut and iCoT do
        rows = sampler.next()[rank::world]  # this process's share of the step's batch
        c, batches, loss_kw = step_batches(cfg, plan, tok, train, encoded, rows, step, c_values, gen, opts, device)
        ce, lat, norm, sigma, n_tokens = train_step(trainee, optimizer, batches, loss_kw, cfg, device, step)
        history.append((step, c, ce, lat))
        step, tokens_seen, t_train = step + 1, tokens_seen + n_tokens, t_train + time.time() - t0

        if step % cfg.log_every == 0 or step == last:
            elapsed = time.time() - t_start
            extra = (f" | c {c} | ce {ce:.4f} | latent {lat:.4f} | norm {norm:.3f} | sigma {sigma:.4f}" if head
                     else "" if not plan else f" | stage {c}" if plan.thoughts else f" | removed {c}")
            print0(f"step {step}/{cfg.max_steps} | loss {ce + cfg.latent_weight * lat:.4f}{extra} | lr {lr:.2e} | "
                   f"{tokens_seen / t_train:,.0f} tok/s | {elapsed / 60:.1f} min | "
                   f"eta {(last - step) * elapsed / (step - first) / 60:.1f} min", flush=True)
        if step % cfg.eval_every == 0 or step == last:
            gen_states = generator_states(gen)  # every process's, for an exact resume
            if rank == 0:  # validation and checkpoints in process 0; the others wait at the barrier
                if not finite_model(model, head, probe, think):  # an update can blow the weights up with a finite loss
                    raise UserError(f"training diverged at step {step}: its update left weights or outputs that are "
                                    f"not finite, not saved; lower --lr; {kept_checkpoint(cfg.out_dir)}")
                acc, per_c = validate(model, head, tok, val, c_values, cfg.max_latents, plan and plan.thoughts, think)
                # ties go to the later, longer-trained checkpoint; icot's only once its schedule has removed every chain
                selectable = not plan or plan.selectable(step)
                # a schedule that ended with chains left (not one paused by --stop_at): its last one, said below
                fallback = not selectable and step == cfg.max_steps and best_val < 0
                is_best = (selectable and acc >= best_val) or fallback
                best_val = max(best_val, acc) if selectable else best_val
                path = save_checkpoint(cfg.out_dir, step, {
                    "script": "train_sft", "model": model.state_dict(), "model_config": asdict(model_cfg),
                    "latent_head": aside.state_dict() if aside is not None else None, "latent_config": latent_config,
                    "config": asdict(cfg), "tokenizer": tok.spec(), "step": step, "best_val": best_val,
                    "val_acc": acc, "seconds": before + time.time() - t_start, "started_from": start,
                    **training_state(optimizer, sampler, gen_states)}, cfg.keep_last, is_best)
                best = f"{100 * best_val:.1f}%" if best_val >= 0 else "none yet (chains not all removed)"
                print(f"eval step {step}: val accuracy {100 * acc:.1f}% ({per_c}) | best {best} | saved {path}",
                      flush=True)
                if fallback:
                    print(f"the schedule had not removed every chain by step {step}: `best` is this last checkpoint; "
                          f"raise --max_steps or lower --remove_every ({plan.remove_every})", flush=True)
            barrier()
    minutes, tps = (time.time() - t_start) / 60, tokens_seen / max(1e-9, t_train)
    release_run(cfg.out_dir)
    cleanup_distributed()
    print0(f"done: {step} steps in {minutes:.1f} min ({t_train / 60:.1f} min training, {tps:,.0f} tok/s"
           + (f"; {before / 60 + minutes:.1f} min with the processes it resumed" if before else "")
           + "), best val accuracy " + (f"{100 * best_val:.1f}%" if best_val >= 0 else "none (chains not all removed)"))
    return {"model": model, "head": aside, "tokenizer": tok, "best_val": best_val, "minutes": minutes, "step": step,
            "tokens_per_s": tps, "history": history}


if __name__ == "__main__":
    run_cli(main, parse_config(TrainConfig))

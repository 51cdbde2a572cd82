"""
Benchmark CoLaR against text chain-of-thought (CoT) on one model: training, decoding, the KV cache, memory.

In one run: training throughput, inference time per question at c = 1..5, text decoding with and without the KV
cache, and peak memory.

    python bench.py                                   # CPU, defaults: about 1 minute on 2 cores
    python bench.py --device cuda --batch_size 256 --questions 1024 --out results/bench.json
    python bench.py --data_dir data/synth             # examples from a data folder's train.txt

Every figure is the median over --repeats timed runs after --warmup untimed ones:
- training: forward + backward + gradient clipping + AdamW step (batches built beforehand), one step per batch over
  the same c_max batches of examples for every method: CoT (text chain), CoLaR at c = 1 (the sequences are as long
  as CoT's: this isolates the cost of compression and the latent head) and CoLaR's training mix (c = 1..c_max, one
  batch each: training draws c uniformly from these). Tokens are counted as train_sft.py's progress line counts
  them: the real positions of the batch, latent slots included. CoLaR's overhead is its time per training example
  over CoT's, minus 1, at c = 1 and over the mix, against --target (at most 15% by default). Its tokens/s
  tells another story: CoLaR packs a chain into fewer positions, so per example it does less work at c > 1.
- inference: greedy decoding of --questions questions, --batch_size at a time, with sample.answer_questions: the
  text chain (c = 1, LM head, as evaluate.py --text_cot) and CoLaR latents at c = 1..c_max.
- KV cache: sample.generate against generate_nocache below, which runs the model over the whole prefix at each step.
The model is randomly initialised (timing needs no trained model), so its chains would stop at random places: the
rows of <|eot|> and <|eos|> in its tied embedding table are zeroed, which makes their logit 0, never the argmax, and
every method runs to caps set from the data: L chain tokens (the questions' mean chain length), ceil(L / c) latents,
A answer tokens, plus <|eot|> and <|eos|>. The run checks that every method did exactly that.
"""
import copy
import json
import math
import os
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import torch

import colar
from common import (UserError, autocast, check_flags, check_writable, make_optimizer, parse_config, pick_device,
                    print_config, run_cli)
from data.format import read_split
from data.synthetic import SynthConfig, generate as make_synthetic
from latent_head import LatentHead
from model import GPT, GPTConfig
from sample import answer_questions, generate, left_pad
from tokenizer import Tokenizer


@dataclass
class BenchConfig:
    data_dir: str = ""        # folder with train.txt (GSM8K-Aug format); empty: synthetic examples made in memory
    n_layer: int = 4          # transformer blocks
    n_head: int = 4           # attention heads
    n_embd: int = 128         # model width
    c_max: int = 5            # CoLaR speeds 1..c_max, in training and inference
    batch_size: int = 64      # sequences per training step, questions decoded together
    questions: int = 64       # questions decoded per timed run
    repeats: int = 5          # timed runs per figure (the median is reported)
    warmup: int = 1           # untimed runs before them
    target: float = 0.15      # the training overhead CoLaR may have over CoT (time per example)
    lr: float = 2e-3          # training steps as train_sft.py takes them by default: AdamW's learning rate,
    weight_decay: float = 0.1 # its weight decay on matrices,
    latent_weight: float = 10.0  # the latent loss's weight beside the CE
    grad_clip: float = 1.0    # and the gradient clipping
    seed: int = 1337          # the model's weights and the synthetic examples
    device: str = "auto"      # auto, cpu, cuda, mps
    out: str = ""             # write the figures to this JSON file (empty: print only)


# --- timing and memory -----------------------------------------------------------------------------------------
def sync(device):
    """Wait for the device's queued work, so that the clock reads the time the work took."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def peak_rss_mb():
    """This process's peak resident memory so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def measure(fn, cfg, device):
    """Median seconds of fn() over cfg.repeats calls after cfg.warmup untimed ones, fn's last output, and memory: on
    CUDA the most the tensors held during the calls, elsewhere the process's peak RSS before and after them."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before, times = peak_rss_mb(), []
    for i in range(cfg.warmup + cfg.repeats):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        if i >= cfg.warmup:
            times.append(time.perf_counter() - t0)
    m = {"s": statistics.median(times), "out": out}
    if device.type == "cuda":
        m["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        m["rss_before_mb"], m["peak_mem_mb"] = rss_before, peak_rss_mb()
    return m


def mem_fields(m):
    return {k: m[k] for k in ("peak_mem_mb", "rss_before_mb") if k in m}


# --- training --------------------------------------------------------------------------------------------------
def bench_train(model, head, tok, groups, cs, cfg, device):
    """Time one training step per group of examples, at speed cs[i] (head None: CoT, c = 1). Trains copies of the
    model and head with a fresh AdamW, so every method starts from the same weights."""
    model = copy.deepcopy(model).train()
    head = copy.deepcopy(head).train() if head is not None else None
    optimizer = make_optimizer([model] + ([head] if head else []), cfg.lr, cfg.weight_decay)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)  # chunk labels, latent noise
    batches = [colar.layout(tok, examples, c, latent=head is not None).to(device) for examples, c in zip(groups, cs)]

    def run():
        for b, c in zip(batches, cs):
            with autocast(device):  # the backward pass runs outside it, as in train_sft.py
                ce, lat, _ = colar.sft_loss(model, head, b, c, tok.eot, gen)
                loss = ce + cfg.latent_weight * lat
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:  # 0: no clipping, as in train_sft.py
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()

    m = measure(run, cfg, device)
    n, tokens = len(batches), sum(int(b.mask.sum()) for b in batches)
    return {"s_per_step": m["s"] / n, "s_per_example": m["s"] / (n * cfg.batch_size), "tokens_per_step": tokens / n,
            "tokens_per_s": tokens / m["s"], **mem_fields(m)}


# --- decoding without a cache ----------------------------------------------------------------------------------
@torch.no_grad()
def generate_nocache(model, prompts, max_new_tokens, stop_id, pad_id):
    """Greedy decoding as sample.generate does it, without the KV cache: each step runs the model over the whole
    left-padded prefix again and keeps the last position's logits. Finished rows leave the batch. The same tokens."""
    device = next(model.parameters()).device
    idx, mask, pos = left_pad(prompts, pad_id, device)
    max_new_tokens = min(max_new_tokens, model.cfg.block_size - idx.size(1) + 1)  # the last token is never fed
    out = [[] for _ in prompts]
    rows = torch.arange(len(prompts), device=device)  # which prompt each batch row answers
    for _ in range(max_new_tokens):
        tok = model(idx, pos=pos, mask=mask)[0][:, -1].argmax(-1)  # (B,)
        for r, t in zip(rows.tolist(), tok.tolist()):
            out[r].append(t)
        alive = tok != stop_id
        if not alive.any():
            break
        idx, mask, pos, rows, tok = idx[alive], mask[alive], pos[alive], rows[alive], tok[alive]
        idx = torch.cat([idx, tok[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        pos = torch.cat([pos, pos[:, -1:] + 1], dim=1)
    return out


# --- the benchmark ---------------------------------------------------------------------------------------------
def load_examples(cfg, n):
    """n (question, steps, answer) examples and a line saying where they came from."""
    if cfg.data_dir:
        examples = read_split(os.path.join(cfg.data_dir, "train.txt"))
        if len(examples) < n:
            raise UserError(f"{cfg.data_dir}/train.txt has {len(examples)} examples, the benchmark needs {n}")
        return examples[:n], f"{n} examples from {cfg.data_dir}/train.txt"
    examples = make_synthetic(SynthConfig(seed=cfg.seed, n_train=n, n_val=0, n_test=0))["train"]
    return examples, f"{n} synthetic examples made in memory (data/synthetic.py defaults, seed {cfg.seed})"


def main(cfg):
    check_flags(cfg, positive=("n_layer", "n_head", "n_embd", "c_max", "batch_size", "questions", "repeats", "lr"),
                nonnegative=("warmup", "weight_decay", "grad_clip", "latent_weight", "target"))
    if cfg.n_embd % cfg.n_head:
        raise UserError(f"--n_embd ({cfg.n_embd}) must be divisible by --n_head ({cfg.n_head})")
    if cfg.out:
        check_writable(cfg.out, "--out")  # now, not after the benchmark
    print_config(cfg)
    device = pick_device(cfg.device)
    precision = "bf16 autocast" if isinstance(autocast(device), torch.autocast) else "fp32"
    cs = list(range(1, cfg.c_max + 1))
    examples, source = load_examples(cfg, cfg.c_max * cfg.batch_size + cfg.questions)
    tok = Tokenizer("char")
    encoded = colar.encode(tok, examples, "cot")
    groups = [encoded[i * cfg.batch_size:(i + 1) * cfg.batch_size] for i in range(len(cs))]  # a batch per c
    questions = [q for q, _, _ in examples[-cfg.questions:]]
    L = round(statistics.mean(len(ch) for _, ch, _ in encoded[-cfg.questions:]))  # chain tokens
    A = round(statistics.mean(len(a) for _, _, a in encoded[-cfg.questions:]))  # answer tokens
    text_new = L + 1 + A + 1  # chain, <|eot|>, answer, <|eos|>
    longest = max(max(len(q) + len(ch) + len(a) + 8 for q, ch, a in encoded),  # a training row,
                  max(len(colar.prompt(tok, q, 1)) for q in questions) + text_new)  # or a prompt and its caps

    torch.manual_seed(cfg.seed)
    model = GPT(GPTConfig(vocab_size=tok.n_vocab, block_size=longest + 32, n_layer=cfg.n_layer, n_head=cfg.n_head,
                          n_embd=cfg.n_embd)).to(device)
    head = LatentHead(cfg.n_embd).to(device)
    with torch.no_grad():
        model.wte.weight[[tok.eot, tok.eos]] = 0.0  # never the argmax: no chain or answer stops early (docstring)
        b = colar.layout(tok, groups[0], 1, latent=True).to(device)
        colar.colar_loss(model, head.train(), b, 1, tok.eot, torch.Generator(device=device).manual_seed(0))
    model.eval()
    head.eval()  # the CoLaR loss above set the latent head's scale, as training's first step does
    n_params = model.num_params() / 1e6, sum(p.numel() for p in head.parameters()) / 1e6
    print(f"device {device}, {precision} | model {cfg.n_layer} layers x {cfg.n_embd} ({n_params[0]:.2f}M parameters, "
          f"latent head {n_params[1]:.2f}M), random weights | medians of {cfg.repeats} runs after {cfg.warmup} warm-up")
    print(f"data: {source}; the questions' chains {L} tokens, answers {A} (means, rounded)")
    mem_label = ("peak MB: torch.cuda.max_memory_allocated during the runs (tensors only)" if device.type == "cuda" else
                 "peak MB: the process's peak RSS (ru_maxrss) after the runs (before them in brackets), an upper\n"
                 "bound on their memory: it includes Python, torch and all that ran earlier")
    res = {"config": asdict(cfg), "device": str(device), "precision": precision, "memory": mem_label,
           "lengths": {"chain": L, "answer": A, "latents": {c: math.ceil(L / c) for c in cs}}}

    def mem(r):
        return f"{r['peak_mem_mb']:8.0f}" + (f" ({r['rss_before_mb']:.0f})" if "rss_before_mb" in r else "")

    # 1. training throughput
    train = {"cot": bench_train(model, None, tok, groups, [1] * len(cs), cfg, device),
             "colar_c1": bench_train(model, head, tok, groups, [1] * len(cs), cfg, device),
             "colar_mix": bench_train(model, head, tok, groups, cs, cfg, device)}
    for r in train.values():
        for key in ("s_per_step", "tokens_per_s", "s_per_example"):
            r[f"ratio_{key}"] = r[key] / train["cot"][key]
    overhead = {"target": cfg.target}
    for k in ("c1", "mix"):
        overhead[k] = train[f"colar_{k}"]["ratio_s_per_example"] - 1
        overhead[f"{k}_within"] = overhead[k] <= cfg.target
    res.update(train=train, overhead=overhead)
    print(f"\ntraining: forward + backward + AdamW step, the same {len(cs)} batches of {cfg.batch_size} examples each")
    print(f"{'method':<24}{'s/step':>9}{'ratio':>7}{'tokens/s':>10}{'ratio':>7}{'tok/step':>9}{'ms/example':>11}"
          f"{'peak MB':>9}")
    names = {"cot": "CoT (text chain, c=1)", "colar_c1": "CoLaR c=1", "colar_mix": f"CoLaR mix c=1..{cfg.c_max}"}
    for k, r in train.items():
        print(f"{names[k]:<24}{r['s_per_step']:9.3f}{r['ratio_s_per_step']:7.2f}{r['tokens_per_s']:10,.0f}"
              f"{r['ratio_tokens_per_s']:7.2f}{r['tokens_per_step']:9.0f}{1e3 * r['s_per_example']:11.2f} {mem(r)}")
    print("tokens: real positions (latent slots included), as train_sft.py's progress line counts them. CoLaR packs a\n"
          "chain of L tokens into ceil(L/c) positions, so tokens/s undercounts its work at c > 1; the fair figure is\n"
          "time per training example (the same examples and batch size: its ratio is that of s/step).")
    print(f"CoLaR's overhead = its time per training example / CoT's - 1 (target: at most {100 * cfg.target:.0f}%)")
    for k, what in (("c1", "at c=1 (sequences as long as CoT's: the cost of compression and the latent head)"),
                    ("mix", f"over the training mix c=1..{cfg.c_max} (what a CoLaR training step costs on average)")):
        print(f"  {what}: {100 * overhead[k]:+.1f}%, {'within' if overhead[k + '_within'] else 'OVER'} target")

    # 2. inference time per question
    def answer(c, **kw):
        def run():
            with autocast(device):
                return answer_questions(model, tok, questions, c, batch_size=cfg.batch_size, **kw)
        return run

    decode = {"text": measure(answer(1, max_new_tokens=text_new), cfg, device)}
    for c in cs:
        decode[f"colar_c{c}"] = measure(answer(c, max_new_tokens=A + 1, head=head, max_latents=math.ceil(L / c)),
                                        cfg, device)
    for k, m in decode.items():  # every method did the intended work: no row stopped before its caps
        want = text_new if k == "text" else math.ceil(L / int(k[7:]))  # a text chain without <|eot|> is all of it
        if any(r["length"] != want or r["hit_cap"] != (k != "text") or r["finished"] for r in m["out"]):
            raise RuntimeError(f"{k}: a row stopped before its cap, so the methods' work differs")
        decode[k] = {"s_per_question": m["s"] / cfg.questions, "chain_length": L if k == "text" else want,
                     **mem_fields(m)}
    for r in decode.values():
        r["ratio"] = r["s_per_question"] / decode["text"]["s_per_question"]
    res["decode"] = decode
    print(f"\ninference: greedy, {cfg.questions} questions in batches of {cfg.batch_size}; forced lengths: text {L} "
          f"chain tokens + <|eot|> + {A} answer + <|eos|>,\nCoLaR ceil({L}/c) latents + <|eot|> + {A} answer + <|eos|>")
    print(f"{'method':<24}{'#L':>6}{'ms/question':>13}{'ratio':>8}{'peak MB':>9}")
    for k, r in decode.items():
        name = "text CoT (c=1, LM head)" if k == "text" else f"CoLaR c={k[7:]}"
        print(f"{name:<24}{r['chain_length']:6d}{1e3 * r['s_per_question']:13.3f}{r['ratio']:8.2f} {mem(r)}")

    # 3. KV cache on and off, text decoding
    prompts = [colar.prompt(tok, q, 1) for q in questions]

    def text(gen_fn):
        def run():
            with autocast(device):
                return [o for i in range(0, len(prompts), cfg.batch_size)
                        for o in gen_fn(model, prompts[i:i + cfg.batch_size], text_new, tok.eos, tok.pad)]
        return run

    check = prompts[:8]  # same tokens, checked in fp32 (bf16 rounding could flip a near-tie between the two)
    if generate(model, check, text_new, tok.eos, tok.pad) != generate_nocache(model, check, text_new, tok.eos, tok.pad):
        raise RuntimeError("decoding without the KV cache gave other tokens than sample.generate")
    kv = {"on": measure(text(generate), cfg, device), "off": measure(text(generate_nocache), cfg, device)}
    kv = {k: {"s_per_question": m["s"] / cfg.questions, **mem_fields(m)} for k, m in kv.items()}
    for r in kv.values():
        r["ratio"] = r["s_per_question"] / kv["on"]["s_per_question"]
    res["kv_cache"] = kv
    print(f"\nKV cache, text decoding of {text_new} tokens per question (sample.generate; off: the whole prefix "
          f"again each step;\nthe same tokens, checked on {len(check)} questions)")
    print(f"{'method':<24}{'ms/question':>13}{'ratio':>8}{'peak MB':>9}")
    for k, r in kv.items():
        print(f"{'KV cache ' + k:<24}{1e3 * r['s_per_question']:13.3f}{r['ratio']:8.2f} {mem(r)}")
    print(mem_label)

    if cfg.out:
        os.makedirs(os.path.dirname(cfg.out) or ".", exist_ok=True)
        with open(cfg.out, "w") as f:
            json.dump(res, f, indent=1)
        print(f"wrote {cfg.out}")
    return res


if __name__ == "__main__":
    run_cli(main, parse_config(BenchConfig))

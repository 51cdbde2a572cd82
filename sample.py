"""
Answer questions with a trained model: batched decoding with the KV cache (text CoT, No-CoT, CoLaR latents at a
prompted speed c, or a baseline's fixed thoughts), accuracy over a data split, and, from the command line, the chain
printed: text, or each latent as the tokens it is nearest to.

    python sample.py --ckpt out/cot --question "3+4*2-5+7*3-1"
    python sample.py --ckpt out/cot --question "3+4*2-5+7*3-1" --decode sampled --seed 1
    python sample.py --ckpt out/cot --questions_file my_questions.txt     # one question per line, answered as a batch
    python sample.py --ckpt out/colar --c 3 --question "3+4*2-5+7*3-1"    # latents at speed 3, each shown as tokens
"""
from dataclasses import dataclass

import torch

from baselines import THOUGHT_MODES, inference_thoughts, thinker
from colar import prompt
from checkpoint import load_checkpoint
from common import UserError, autocast, check_flags, parse_config, pick_device, run_cli, trained_speeds
from data.format import answers_match
from latent_head import LatentHead
from model import GPT, GPTConfig, KVCache
from tokenizer import Tokenizer


def load_model(path, device="cpu", which="best"):
    """Rebuild (model, latent head or None, tokenizer, checkpoint dict) from a checkpoint file or run folder."""
    ckpt = load_checkpoint(path, which)
    head = None
    try:
        model = GPT(GPTConfig(**ckpt["model_config"]))
        model.load_state_dict(ckpt["model"])
        if ckpt.get("latent_head") is not None:  # CoLaR's latent head, or a baseline's thought module
            mode = ckpt["config"].get("mode")
            head = thinker(mode, model.cfg.n_embd) if mode in THOUGHT_MODES else LatentHead(model.cfg.n_embd,
                                                                                           **ckpt["latent_config"])
            head.load_state_dict(ckpt["latent_head"])
            head = head.to(device).eval()
        tok = Tokenizer.from_spec(ckpt["tokenizer"])
    except (RuntimeError, TypeError, KeyError) as e:
        raise UserError(f"checkpoint {ckpt['path']} cannot be rebuilt from its own model config and tokenizer spec: "
                        f"{' '.join(str(e).split())[:200]}") from None
    return model.to(device).eval(), head, tok, ckpt


def left_pad(seqs, pad_id, device="cpu"):
    """Lists of ids -> idx (B, T) left-padded, mask (B, T) True at real tokens, pos (B, T) counting real tokens only."""
    T = max(len(s) for s in seqs)
    idx = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.bool)
    for i, s in enumerate(seqs):
        idx[i, T - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, T - len(s):] = True
    pos = (mask.long().cumsum(1) - 1).clamp(min=0)
    return idx.to(device), mask.to(device), pos.to(device)


def pick_tokens(logits, temperature=0.0, top_p=1.0, generator=None):
    """logits (B, V) -> (B,) token ids: argmax at temperature 0, else nucleus (top-p) sampling."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > top_p  # tokens wholly beyond the nucleus (the top one always stays)
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


@torch.no_grad()
def generate(model, prompts, max_new_tokens, stop_id, pad_id, temperature=0.0, top_p=1.0, generator=None):
    """Decode every prompt (a list of id lists) until it emits `stop_id` or has `max_new_tokens` new tokens.
    Finished rows leave the batch (and its cache), so they cost nothing more; the last new token is never fed, so
    a prompt of n tokens leaves room for block_size - n + 1 (as a training row of block_size + 1 tokens is read).
    Returns the new ids of each prompt, the stop token included when it was reached."""
    max_new_tokens = min(max_new_tokens, model.cfg.block_size - max(len(p) for p in prompts) + 1)
    if max_new_tokens <= 0:
        return [[] for _ in prompts]
    cache, logits, _, next_pos = prefill(model, prompts, pad_id)
    return decode(model, cache, logits, next_pos, max_new_tokens, stop_id, temperature, top_p, generator)


def prefill(model, prompts, pad_id):
    """The prompts (lists of ids), left-padded, through the model into a new KV cache. Returns the cache, the logits
    (B, V) and hidden states (B, C) at each row's last position, and next_pos (B,): the position of its next input."""
    device = next(model.parameters()).device
    idx, mask, pos = left_pad(prompts, pad_id, device)
    cache = KVCache(model.cfg.n_layer)
    with autocast(device):  # bf16 on CUDA, fp32 elsewhere
        logits, _, h = model(idx, pos=pos, mask=mask, cache=cache)
    return cache, logits[:, -1], h[:, -1], mask.sum(1)


@torch.no_grad()
def decode(model, cache, logits, next_pos, max_new_tokens, stop_id, temperature=0.0, top_p=1.0, generator=None):
    """The token-by-token loop of `generate`, from a filled cache: logits (B, V) at each row's last position and
    next_pos (B,) the position of its next token. Returns the new ids of each row, the stop token included when it
    was reached."""
    device = logits.device
    out = [[] for _ in range(logits.size(0))]
    rows = torch.arange(logits.size(0), device=device)  # which prompt each batch row answers
    for step in range(max_new_tokens):
        tok = pick_tokens(logits, temperature, top_p, generator)
        for r, t in zip(rows.tolist(), tok.tolist()):
            out[r].append(t)
        alive = tok != stop_id
        if step == max_new_tokens - 1 or not alive.any():
            break
        if not alive.all():
            keep = alive.nonzero().squeeze(1)
            cache.keep(keep)
            rows, tok, next_pos = rows[keep], tok[keep], next_pos[keep]
        with autocast(device):
            logits = model(tok[:, None], pos=next_pos[:, None], cache=cache)[0][:, -1]
        next_pos = next_pos + 1
    return out


@torch.no_grad()
def answer_with_thoughts(model, tok, questions, n_thoughts, think=lambda h: h, temperature=0.0, top_p=1.0,
                         generator=None, max_answer_tokens=32):
    """Coconut's inference: the prompt, n_thoughts thoughts, <|eot|>, then the answer token by token (greedy at
    temperature 0). Returns one dict per question: answer (text), finished (closed by <|eos|>), length (n_thoughts)."""
    device = next(model.parameters()).device
    cache, _, h, next_pos = prefill(model, [prompt(tok, q, 1) for q in questions], tok.pad)
    with autocast(device):
        for _ in range(n_thoughts):
            _, _, h = model(embeds=think(h)[:, None], pos=next_pos[:, None], cache=cache)
            h, next_pos = h[:, -1], next_pos + 1
        eot = torch.full((len(questions), 1), tok.eot, device=device)
        logits = model(eot, pos=next_pos[:, None], cache=cache)[0][:, -1]
    room = model.cfg.block_size - int(next_pos.max())  # <|eot|> sits at next_pos; the last answer token is not fed
    outs = decode(model, cache, logits, next_pos + 1, min(max_answer_tokens, room), tok.eos, temperature, top_p,
                  generator)
    return [{"answer": tok.decode(o[:o.index(tok.eos)] if tok.eos in o else o).strip(), "finished": tok.eos in o,
             "length": n_thoughts, "chain": [], "hit_cap": False, "latents": [], "lm_top": []} for o in outs]


def split_output(tok, ids, chain_given=False):
    """Generated ids -> (chain ids, answer text, finished). The chain ends at <|eot|>, the answer at <|eos|>;
    finished means an answer was given and closed: <|eot|> (unless the chain was given) and then <|eos|>."""
    finished = tok.eos in ids
    if finished:
        ids = ids[:ids.index(tok.eos)]
    if chain_given:
        return [], tok.decode(ids).strip(), finished
    if tok.eot not in ids:  # never stopped thinking: no answer
        return ids, "", False
    k = ids.index(tok.eot)
    return ids[:k], tok.decode(ids[k + 1:]).strip(), finished


def check_prompts(model, tok, questions, c, thoughts=0):
    """The prompt of every question at speed c (No-CoT, c = 0: with its <|eot|>), refused in one line when one leaves
    the model's context no room to answer (a baseline's thoughts and <|eot|> come first: its prompt is without it)."""
    prompts = []
    for q in questions:
        p = prompt(tok, q, c) + ([tok.eot] if c == 0 and not thoughts else [])
        need = len(p) + (thoughts + 1 if thoughts > 0 else 0)
        if need >= model.cfg.block_size:
            what = f" (with its {thoughts} thoughts and <|eot|>: {need})" if thoughts > 0 else ""
            raise UserError(f"the prompt is {len(p)} tokens{what} but the model's context is "
                            f"{model.cfg.block_size}: {q[:60]!r}")
        prompts.append(p)
    return prompts


@torch.no_grad()
def answer_questions(model, tok, questions, c=1, temperature=0.0, top_p=1.0, seed=0, max_new_tokens=0, batch_size=256,
                     head=None, latent_temperature=0.0, max_latents=64, stop="greedy", keep_latents=False, thoughts=0,
                     think=None):
    """Answer with no chain (c = 0, No-CoT: <|eot|> follows <|bot|> at once), a text chain of thought (c = 1, no
    latent head), CoLaR latents at speed c (with a latent head; c = 1 then means uncompressed latents), or, with
    thoughts > 0, a fixed number of a baseline's thoughts (think(h): the next input; default h itself, Coconut).
    max_new_tokens (0: the context): the most new tokens of a text chain and its answer; with latents, the most
    answer tokens after them (generate_latent's max_answer_tokens). Returns one dict per question: chain (text-chain
    ids), length (chain tokens or latents), answer (text), finished (the answer was closed by <|eos|>), hit_cap
    (latents only: stopped by max_latents), latents."""
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    max_new = max_new_tokens or model.cfg.block_size
    every = check_prompts(model, tok, questions, c, thoughts)  # all of them, before the first batch is decoded
    results = []
    for i in range(0, len(questions), batch_size):
        prompts = every[i:i + batch_size]
        if thoughts > 0:
            results += answer_with_thoughts(model, tok, questions[i:i + batch_size], thoughts, think or (lambda h: h),
                                            temperature, top_p, generator, max_new)
            continue
        if head is not None and c >= 1:
            for o in generate_latent(model, head, tok, prompts, max_latents, max_new, latent_temperature, temperature,
                                     top_p, stop, generator, keep_latents):
                results.append({"chain": [], "length": o["n_latents"], "answer": tok.decode(o["answer"]).strip(),
                                "finished": o["finished"], "hit_cap": o["hit_cap"], "latents": o["latents"],
                                "lm_top": o["lm_top"]})
            continue
        for ids in generate(model, prompts, max_new, tok.eos, tok.pad, temperature, top_p, generator):
            chain, answer, finished = split_output(tok, ids, chain_given=(c == 0))
            results.append({"chain": chain, "length": len(chain), "answer": answer, "finished": finished,
                            "hit_cap": False, "latents": [], "lm_top": []})
    return results


@torch.no_grad()
def generate_latent(model, head, tok, prompts, max_latents=64, max_answer_tokens=32, latent_temperature=0.0,
                    temperature=0.0, top_p=1.0, stop="greedy", generator=None, keep_latents=False):
    """CoLaR inference for a batch of prompts (each ending in <|bot|>), with the KV cache.

    Each row first thinks: at its last position, the LM head decides whether <|eot|> comes next (argmax, or a sampled
    token with stop="sampled"); if not, the latent head's sample (mean at latent_temperature 0), times its scale, is fed
    as the next input embedding. After max_latents latents <|eot|> is forced (hit_cap; also set for a row still
    thinking when the context ends). Then the row answers token by token until <|eos|>. Rows think and answer side
    by side in one loop; a row that has answered leaves the batch.
    Returns one dict per prompt: n_latents, answer (ids, without <|eos|>), finished, hit_cap, and with keep_latents
    latents (the fed vectors) and lm_top (the LM head's 3 likeliest tokens where each latent was produced)."""
    device = next(model.parameters()).device
    # one decision per step, each step's input fed but the last's: block_size - n + 1 decisions after n prompt tokens
    max_steps = min(max_latents + 1 + max_answer_tokens, model.cfg.block_size - max(len(p) for p in prompts) + 1)
    B = len(prompts)
    out = [{"n_latents": 0, "answer": [], "finished": False, "hit_cap": False, "latents": [], "lm_top": []}
           for _ in range(B)]
    # the model runs in bf16 on CUDA (fp32 elsewhere); the latent head outside autocast, in its own dtype
    cache, logits, h, next_pos = prefill(model, prompts, tok.pad)  # (B, V), (B, C), (B,)
    rows = torch.arange(B, device=device)  # which prompt each batch row answers
    thinking = torch.ones(B, dtype=torch.bool, device=device)
    n_lat = torch.zeros(B, dtype=torch.long, device=device)  # (b,) latents fed so far by each row
    eot_emb = model.wte.weight[tok.eot]
    for step in range(max_steps):
        # thinking rows: stop now, or feed the next latent
        stop_tok = pick_tokens(logits, temperature if stop == "sampled" else 0.0, top_p, generator)
        cap = n_lat >= max_latents
        stops = thinking & ((stop_tok == tok.eot) | cap)
        latent = head.sample(h, latent_temperature, generator)  # (b, C)
        ans_tok = pick_tokens(logits, temperature, top_p, generator)  # answering rows: the next answer token
        alive = torch.ones_like(thinking)
        if keep_latents:  # to the CPU once per step, not once per row
            latent_cpu, top3 = latent.cpu(), logits.topk(3).indices.tolist()
        for i, (r, th, st, cp, s_tok, a_tok) in enumerate(zip(rows.tolist(), thinking.tolist(), stops.tolist(),
                                                             cap.tolist(), stop_tok.tolist(), ans_tok.tolist())):
            if th and st:
                out[r]["hit_cap"] = cp and s_tok != tok.eot
            elif th:
                out[r]["n_latents"] += 1
                if keep_latents:  # the latent, and the LM head's top tokens where it was produced
                    out[r]["latents"].append(latent_cpu[i])
                    out[r]["lm_top"].append(top3[i])
            elif a_tok == tok.eos:
                out[r]["finished"], alive[i] = True, False
            else:
                out[r]["answer"].append(a_tok)
        x = torch.where(thinking[:, None], latent, model.wte(ans_tok))  # (b, C) the next input of each row
        x = torch.where(stops[:, None], eot_emb.expand_as(x), x)
        n_lat = n_lat + (thinking & ~stops).long()
        thinking = thinking & ~stops
        if not alive.all():
            keep = alive.nonzero().squeeze(1)
            if len(keep) == 0:
                break
            cache.keep(keep)
            rows, x, next_pos, thinking, n_lat = rows[keep], x[keep], next_pos[keep], thinking[keep], n_lat[keep]
        if step == max_steps - 1:  # the last decision: nothing more to feed
            break
        with autocast(device):
            logits, _, h = model(embeds=x[:, None], pos=next_pos[:, None], cache=cache)
        logits, h = logits[:, -1], h[:, -1]
        next_pos = next_pos + 1
    for r in rows[thinking].tolist():  # the context ended before the row stopped thinking: cut off, as by the cap
        out[r]["hit_cap"] = True
    return out


def answered(result, reference):
    """Whether one of answer_questions' results answers `reference`: closed by <|eos|>, and equal to it (an answer
    cut short by the step budget, " 12" of " 123", is wrong however it reads)."""
    return result["finished"] and answers_match(result["answer"], reference)


def score(model, tok, examples, c=1, temperature=0.0, top_p=1.0, seed=0, batch_size=256, head=None, **latent):
    """(accuracy, mean reasoning length, fraction that hit the latent cap) of one decoding pass over `examples`
    (a list of (question, steps, answer)); with a latent head and c >= 1, CoLaR latent decoding."""
    results = answer_questions(model, tok, [q for q, _, _ in examples], c, temperature, top_p, seed,
                               batch_size=batch_size, head=head, **latent)
    n = max(1, len(examples))
    correct = sum(answered(r, a) for r, (_, _, a) in zip(results, examples))
    return correct / n, sum(r["length"] for r in results) / n, sum(r["hit_cap"] for r in results) / n


def nearest_tokens(model, latent, k=3):
    """The k tokens whose embeddings point most nearly the way `latent` (C,) does (cosine similarity)."""
    sims = torch.nn.functional.cosine_similarity(model.wte.weight, latent.to(model.wte.weight.device)[None], dim=-1)
    return sims.topk(k).indices.tolist()


def show_tokens(tok, ids):
    """Tokens as short readable strings: a space as ␣, a newline as \\n."""
    return " ".join(repr(tok.decode([i]))[1:-1].replace(" ", "␣") or "''" for i in ids)


def check_sampling(temperature, top_p, latent_temperature):
    """Sampled decoding's settings, refused in one line where they would not sample (a temperature of 0 decodes
    greedily under a `sampled` label, NaN or a top-p outside (0, 1] keeps no token)."""
    if not (temperature > 0 and 0 < top_p <= 1 and latent_temperature >= 0):
        raise UserError(f"sampled decoding needs --temperature > 0, 0 < --top_p <= 1 and --latent_temperature >= 0, "
                        f"got {temperature}, {top_p} and {latent_temperature}")


@dataclass
class SampleConfig:
    ckpt: str = "out/cot"          # checkpoint file or run folder (its best checkpoint by validation)
    question: str = ""             # the question to answer
    questions_file: str = ""       # or a file of questions, one per line, answered as one batch
    c: int = -1                    # speed: 0 no chain, 1 text chain (CoT), or CoLaR latents at speed c; -1: default
    decode: str = "greedy"         # "greedy" or "sampled"
    temperature: float = 1.0       # for sampled decoding
    top_p: float = 0.9             # for sampled decoding
    latent_temperature: float = 1.0  # for sampled decoding of a CoLaR model
    max_latents: int = 64          # CoLaR: cap on latents
    seed: int = 0                  # for sampled decoding
    device: str = "auto"           # auto, cpu, cuda, mps


def main(cfg):
    check_flags(cfg, dict(decode=("greedy", "sampled")), nonnegative=("max_latents",))
    if cfg.decode == "sampled":
        check_sampling(cfg.temperature, cfg.top_p, cfg.latent_temperature)
    questions = [cfg.question] if cfg.question else []
    if cfg.questions_file:
        try:
            with open(cfg.questions_file, encoding="utf-8") as f:
                asked = [line.strip() for line in f if line.strip()]
        except OSError as e:
            raise UserError(f"cannot read --questions_file {cfg.questions_file}: {e.strerror or e}") from None
        except UnicodeDecodeError as e:
            raise UserError(f"--questions_file {cfg.questions_file} is not UTF-8 text ({e})") from None
        if not asked:
            raise UserError(f"--questions_file {cfg.questions_file} has no questions (one per line)")
        questions += asked
    if not questions:
        raise UserError("give a --question or a --questions_file")
    model, head, tok, ckpt = load_model(cfg.ckpt, pick_device(cfg.device))
    run = ckpt["config"]
    mode = run.get("mode")
    thoughts = inference_thoughts(mode, run.get("stages", 0), run.get("c_thought", 0))
    if thoughts and cfg.c >= 0:
        raise UserError(f"--c is for CoT and CoLaR models; this {mode} model always thinks {thoughts} thoughts")
    c = 0 if thoughts else cfg.c if cfg.c >= 0 else max(trained_speeds(run))
    if mode == "nocot" and c != 0:
        raise UserError(f"--c must be 0 (or left out) for this No-CoT model: it answers without a chain, got {c}")
    if head is None and c not in (0, 1):
        raise UserError(f"--c must be 0 (no chain) or 1 (text chain) for this {mode} model, got {c}")
    if head is not None and c < 1 and not thoughts:
        raise UserError(f"--c must be >= 1 for a CoLaR model, got {c}")
    sampled = cfg.decode == "sampled"
    results = answer_questions(model, tok, questions, c, cfg.temperature if sampled else 0.0, cfg.top_p, cfg.seed,
                               head=None if thoughts else head,
                               latent_temperature=cfg.latent_temperature if sampled else 0.0,
                               max_latents=cfg.max_latents, stop="sampled" if sampled else "greedy", keep_latents=True,
                               thoughts=thoughts, think=head if thoughts else None)
    for q, r in zip(questions, results):
        print(f"question: {q}")
        if thoughts:
            print(f"thoughts: {thoughts} ({mode}: hidden states fed back, no chain text)")
        elif head is None:
            print(f"chain   : {tok.decode(r['chain'])}  ({len(r['chain'])} tokens)")
        else:
            print(f"latents : {r['length']} at speed c={c}" + ("  (hit the cap)" if r["hit_cap"] else "")
                  + "; each shown as its nearest tokens (cosine) | the LM head's top tokens where it was made")
            for k, (z, top) in enumerate(zip(r["latents"], r["lm_top"]), 1):
                print(f"  {k:3d}: {show_tokens(tok, nearest_tokens(model, z)):<24} | {show_tokens(tok, top)}")
        print(f"answer  : {r['answer']}" + ("" if r["finished"] else "  (unfinished)"))
    return results


if __name__ == "__main__":
    run_cli(main, parse_config(SampleConfig))

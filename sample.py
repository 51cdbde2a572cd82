"""
Answer questions with a trained model: batched decoding with the KV cache, and the chain printed.

    python sample.py --ckpt out/cot --question "3+4*2-5+7*3-1"
    python sample.py --ckpt out/cot --question "3+4*2-5+7*3-1" --decode sampled --seed 1
    python sample.py --ckpt out/cot --questions_file my_questions.txt     # one question per line, answered as a batch
"""
from dataclasses import dataclass

import torch

from common import UserError, load_model, parse_config, pick_device, run_cli
from model import KVCache


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
    Finished rows leave the batch (and its cache), so they cost nothing more. Returns the new ids of each prompt,
    the stop token included when it was reached."""
    device = next(model.parameters()).device
    idx, mask, pos = left_pad(prompts, pad_id, device)
    max_new_tokens = min(max_new_tokens, model.cfg.block_size - idx.size(1))
    out = [[] for _ in prompts]
    if max_new_tokens <= 0:
        return out
    cache = KVCache(model.cfg.n_layer)
    logits = model(idx, pos=pos, mask=mask, cache=cache)[:, -1]  # (B, V)
    rows = torch.arange(len(prompts), device=device)  # which prompt each batch row answers
    next_pos = mask.sum(1)  # (B,) position of the next token of each row
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
        logits = model(tok[:, None], pos=next_pos[:, None], cache=cache)[:, -1]
        next_pos = next_pos + 1
    return out


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


@torch.no_grad()
def answer_questions(model, tok, questions, c=1, temperature=0.0, top_p=1.0, seed=0, max_new_tokens=0, batch_size=256):
    """Answer with a text chain of thought (c = 1) or with none (c = 0, No-CoT: <|eot|> follows <|bot|> at once).
    Returns one dict per question: chain (ids), answer (text), finished (see split_output)."""
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    max_new = max_new_tokens or model.cfg.block_size
    results = []
    for i in range(0, len(questions), batch_size):
        prompts = []
        for q in questions[i:i + batch_size]:
            p = tok.prompt(q, c) + ([tok.eot] if c == 0 else [])
            if len(p) >= model.cfg.block_size:
                raise UserError(f"the prompt is {len(p)} tokens but the model's context is {model.cfg.block_size}: "
                                f"{q[:60]!r}")
            prompts.append(p)
        outs = generate(model, prompts, max_new, tok.eos, tok.pad, temperature, top_p, generator)
        for ids in outs:
            chain, answer, finished = split_output(tok, ids, chain_given=(c == 0))
            results.append({"chain": chain, "answer": answer, "finished": finished})
    return results


@dataclass
class SampleConfig:
    ckpt: str = "out/cot"          # checkpoint file or run folder (its best checkpoint by validation)
    question: str = ""             # the question to answer
    questions_file: str = ""       # or a file of questions, one per line, answered as one batch
    c: int = -1                    # 1: text chain of thought, 0: no chain; -1: what the model was trained for
    decode: str = "greedy"         # "greedy" or "sampled"
    temperature: float = 1.0       # for sampled decoding
    top_p: float = 0.9             # for sampled decoding
    seed: int = 0                  # for sampled decoding
    device: str = "auto"           # auto, cpu, cuda, mps


def main(cfg):
    if cfg.decode not in ("greedy", "sampled"):
        raise UserError(f"--decode must be greedy or sampled, got {cfg.decode!r}")
    questions = [cfg.question] if cfg.question else []
    if cfg.questions_file:
        try:
            with open(cfg.questions_file, encoding="utf-8") as f:
                questions += [line.strip() for line in f if line.strip()]
        except OSError as e:
            raise UserError(f"cannot read --questions_file: {e}") from None
    if not questions:
        raise UserError("give a --question or a --questions_file")
    model, tok, ckpt = load_model(cfg.ckpt, pick_device(cfg.device))
    c = cfg.c if cfg.c >= 0 else (0 if ckpt["config"].get("mode") == "nocot" else 1)
    if c not in (0, 1):
        raise UserError(f"--c must be 0 (no chain) or 1 (text chain) for this model, got {c}")
    temp = cfg.temperature if cfg.decode == "sampled" else 0.0
    for q, r in zip(questions, answer_questions(model, tok, questions, c, temp, cfg.top_p, cfg.seed)):
        print(f"question: {q}")
        print(f"chain   : {tok.decode(r['chain'])}  ({len(r['chain'])} tokens)")
        print(f"answer  : {r['answer']}" + ("" if r["finished"] else "  (unfinished)"))
    return questions


if __name__ == "__main__":
    run_cli(main, parse_config(SampleConfig))

"""
The latent baselines CoLaR is measured against, on the same model, data and evaluation. So far:

Coconut (Hao et al. 2024, "Training Large Language Models to Reason in a Continuous Latent Space"). A continuous
thought is the model's final hidden state at the previous position, fed back as the next input embedding, with no
head in between. Training is a curriculum from the CoT model: at stage k the first k reasoning steps are replaced by
k x c_thought thoughts (all steps once k reaches their number), the loss is the cross-entropy on the remaining
steps and the answer only, and the optimizer is reset at each stage. A row is laid out as

    [question] <|speed|> 1 <|bot|> [thoughts] [remaining steps] <|eot|> [answer] <|eos|>

(Coconut marks the thoughts' end with its own token and writes the remaining steps after it; here <|eot|> keeps
its one meaning, the end of the reasoning, so the answer is found the same way for every method). Thought t + 1
depends on thought t, so a training step runs one forward pass per thought column, all through one KV cache; the
rows are left-padded so that their thoughts share columns. At inference: the prompt, a fixed number of thoughts,
<|eot|>, then the answer.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from colar import prompt
from common import autocast
from data.format import chain_text
from model import KVCache
from sample import decode, left_pad


# --- Coconut -------------------------------------------------------------------------------------------------------
def coconut_stage(step, stage_steps, max_stage):
    """The curriculum stage at a (0-based) training step: one more stage every stage_steps steps, up to max_stage."""
    return min(step // stage_steps, max_stage)


@dataclass
class ThoughtBatch:
    """Rows left-padded so that every prompt ends at column start - 1: thought j of every row sits in column start + j."""
    idx: torch.Tensor      # (B, T) input ids; <|pad|> on the left, in thought columns and after a row's end
    mask: torch.Tensor     # (B, T) True at real positions, thoughts included
    pos: torch.Tensor      # (B, T) position ids, counting real positions only
    targets: torch.Tensor  # (B, T) the next token, -1 where nothing is learned (the prompt, thoughts, forced <|eot|>)
    thought: torch.Tensor  # (B, T) True where a thought is fed
    start: int             # the first thought column

    def to(self, device):
        return ThoughtBatch(self.idx.to(device), self.mask.to(device), self.pos.to(device), self.targets.to(device),
                            self.thought.to(device), self.start)


def thought_layout(tok, examples, stage, c_thought):
    """(question, steps, answer) examples at Coconut stage `stage`: the first min(stage, steps) steps become
    c_thought thoughts each, the others stay text. The position before each thought learns nothing; the last thought
    learns the first remaining token, unless that is <|eot|> (which inference then feeds itself)."""
    rows = []
    for q, steps, answer in examples:
        k = min(stage, len(steps))
        head = prompt(tok, q, 1)
        rest = tok.encode(chain_text(steps[k:])) if k < len(steps) else []
        seq = head + [tok.pad] * (k * c_thought) + rest + [tok.eot] + tok.encode(" " + answer) + [tok.eos]
        rows.append((seq, len(head), k * c_thought, bool(rest)))
    start = max(P for _, P, _, _ in rows)
    T = max(start - P + len(seq) for seq, P, _, _ in rows) - 1  # the last token is only ever predicted
    B = len(rows)
    b = ThoughtBatch(torch.full((B, T), tok.pad), torch.zeros(B, T, dtype=torch.bool), torch.zeros(B, T, dtype=torch.long),
                     torch.full((B, T), -1), torch.zeros(B, T, dtype=torch.bool), start)
    for i, (seq, P, K, has_rest) in enumerate(rows):
        o, n = start - P, len(seq) - 1  # the row's left padding; its inputs
        b.idx[i, o:o + n] = torch.tensor(seq[:-1])
        b.mask[i, o:o + n] = True
        b.pos[i, o:o + n] = torch.arange(n)
        b.targets[i, o + P - 2:o + n] = torch.tensor(seq[P - 1:])
        b.thought[i, start:start + K] = True
        b.targets[i, start - 1:start + K - 1] = -1  # the positions whose next input is a thought
        if K and not has_rest:
            b.targets[i, start + K - 1] = -1  # <|eot|> right after the thoughts: given at inference
    return b


def thought_forward(model, b, think=lambda h: h):
    """Logits (B, T, V) of a ThoughtBatch, each thought being think(final hidden state at the previous position):
    the columns before the first thought in one pass, then one pass per thought column, then the rest, all through
    one KV cache (so the cost is one pass over the sequence, in pieces); gradients flow through the thoughts."""
    x = model.wte(b.idx)
    cache = KVCache(model.cfg.n_layer)
    S, K = b.start, int(b.thought.sum(1).max())
    piece = lambda sl, e: model(embeds=e, pos=b.pos[:, sl], mask=b.mask[:, sl], cache=cache)  # noqa: E731
    logits, _, h = piece(slice(0, S), x[:, :S])
    parts = [logits]
    for j in range(K):
        col = S + j
        xj = torch.where(b.thought[:, col, None], think(h[:, -1]), x[:, col])
        logits, _, h = piece(slice(col, col + 1), xj[:, None])
        parts.append(logits)
    if S + K < x.size(1):
        parts.append(piece(slice(S + K, None), x[:, S + K:])[0])
    return torch.cat(parts, dim=1)


def thought_loss(model, b, think=lambda h: h):
    """The mean cross-entropy over a ThoughtBatch's targets."""
    logits = thought_forward(model, b, think)
    return F.cross_entropy(logits.flatten(0, 1).float(), b.targets.flatten(), ignore_index=-1)


@torch.no_grad()
def answer_with_thoughts(model, tok, questions, n_thoughts, think=lambda h: h, temperature=0.0, top_p=1.0, seed=0,
                         max_answer_tokens=32):
    """Coconut's inference: the prompt, n_thoughts thoughts, <|eot|>, then the answer token by token (greedy at
    temperature 0). Returns one dict per question: answer (text), finished (closed by <|eos|>), length (n_thoughts)."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    idx, mask, pos = left_pad([prompt(tok, q, 1) for q in questions], tok.pad, device)
    cache = KVCache(model.cfg.n_layer)
    with autocast(device):
        _, _, h = model(idx, pos=pos, mask=mask, cache=cache)
        next_pos = mask.sum(1)
        for _ in range(n_thoughts):
            _, _, h = model(embeds=think(h[:, -1])[:, None], pos=next_pos[:, None], cache=cache)
            next_pos = next_pos + 1
        eot = torch.full((len(questions), 1), tok.eot, device=device)
        logits = model(eot, pos=next_pos[:, None], cache=cache)[0][:, -1]
    room = model.cfg.block_size - int(next_pos.max()) - 1
    outs = decode(model, cache, logits, next_pos + 1, min(max_answer_tokens, room), tok.eos, temperature, top_p,
                  generator)
    return [{"answer": tok.decode(o[:o.index(tok.eos)] if tok.eos in o else o).strip(), "finished": tok.eos in o,
             "length": n_thoughts} for o in outs]

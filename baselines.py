"""
The latent baselines CoLaR is measured against, on the same model, data and evaluation (train_sft.py --mode ...).

coconut (Hao et al. 2024, "Training Large Language Models to Reason in a Continuous Latent Space"). A continuous
thought is the model's final hidden state at the previous position, fed back as the next input embedding, with no head
in between. Training is a curriculum from the CoT model: at stage k = 1, ..., stages the first k reasoning steps are
replaced by k x c_thought thoughts (so many even where the chain has fewer steps, as Coconut pads them); after the
last stage, to the end of training, every step is, by stages x c_thought thoughts (as many as inference uses); the
loss is the cross-entropy on the remaining steps and the answer only, and the optimizer is reset at each stage. A row
is laid out as

    [question] <|speed|> 1 <|bot|> [thoughts] [remaining steps] <|eot|> [answer] <|eos|>

(Coconut marks the thoughts' end with its own token and writes the remaining steps after it; here <|eot|> keeps
its one meaning, the end of the reasoning, so the answer is found the same way for every method). Thought t + 1
depends on thought t, so a training step runs one forward pass per thought column, all through one KV cache; the
rows are left-padded so that their thoughts share columns. At inference (sample.answer_with_thoughts): the prompt, a
fixed number of thoughts, <|eot|>, then the answer.

pause (Coconut's "pause as thought" ablation; Goyal et al. 2024's pause tokens): the same curriculum and layout, but
every thought is one learned vector: as much extra computation before the answer, nothing carried from one thought
to the next. The control for "is it the latents, or just more positions?".

icot (Deng et al. 2024, "From Explicit CoT to Implicit CoT: Learning to Internalize CoT Step by Step"): from the CoT
model, the chain loses its first tokens, one more every remove_every training steps, with the optimizer reset at
each, until none is left and the model answers straight after <|bot|> <|eot|>: #L = 0, the reasoning in its layers.
Each example loses o more tokens, o drawn with P(o) = (1 - e^-lambda) e^(-lambda o) ("removal smoothing", lambda =
4 in the original), so a change of schedule never arrives all at once. Rows are CoT rows (colar.layout) of the
shortened chains; the model is decoded as a CoT model, which writes what chain it still has.

distill (CODI, Shen et al. 2025, "Compressing Chain-of-Thought into Continuous Space via Self-Distillation"): one
model is both teacher, reading the text chain (a CoT row), and student, thinking in stages x c_thought continuous
thoughts (each the final hidden state through a small projector: Linear, GELU, Linear, LayerNorm), laid out as Coconut
after its last stage. Loss = teacher CE (chain and answer) + student CE (answer) + distill_weight x the smooth-L1
distance between the student's and the teacher's hidden states at the position just before the answer's value (the one
that predicts its first token: after <|eot|> and, with the char, number and place tokenizers, the space), after every
block, each divided by the teacher's standard deviation there; the teacher's side carries no gradient. No curriculum.

How these depart from the originals, and why. All four run on this project's small GPT trained from scratch (the
originals fine-tune pretrained GPT-2 or Llama, CODI with LoRA), from the same CoT checkpoint as CoLaR, with the same
optimizer, learning-rate schedule and evaluation, so that only the method differs. Schedules count training steps,
not epochs (a CPU run sees the data a few times at most). Coconut and pause: 3 stages of 2 thoughts (the CoLaR
authors' rerun), each a fifth of training, then every step gone for the last two fifths (Coconut's own GSM8K setting:
3 epochs per stage, then 13), the remaining steps before <|eot|> (above).
iCoT: one token every remove_every steps, by default the whole chain gone at 2/3 of training (the original removes 8
tokens per epoch over many more epochs); only checkpoints without chains are selected, as the original does.
Distill: the projector without dropout; the distance after each block, not also on the input embeddings.
"""
import contextlib
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import colar
from colar import prompt
from data.format import chain_text
from model import KVCache


# --- Coconut -------------------------------------------------------------------------------------------------------
THOUGHT_MODES = ("coconut", "pause", "distill")  # a fixed number of thoughts at inference
BASELINES = THOUGHT_MODES + ("icot",)


def inference_thoughts(mode, stages, c_thought):
    """The fixed number of thoughts a baseline of this mode thinks at inference (0: it has none)."""
    return stages * c_thought if mode in THOUGHT_MODES else 0


def coconut_stage(step, stage_steps, stages):
    """The curriculum stage at a (0-based) training step: 1 for the first stage_steps steps, one more every
    stage_steps steps after, then stages + 1 (every step gone) to the end. (Stage 0, CoT, is the model training
    starts from.)"""
    return min(1 + step // stage_steps, stages + 1)


class PauseThought(nn.Module):
    """Pause as thought: every thought is the same learned vector, whatever came before."""

    def __init__(self, n_embd):
        super().__init__()
        self.vector = nn.Parameter(torch.randn(n_embd) * 0.02)  # the scale of a fresh token embedding

    def forward(self, h):
        return self.vector.to(h.dtype).expand_as(h)


class Projector(nn.Module):
    """CODI's projector from a final hidden state to the next thought: Linear, GELU, Linear, LayerNorm."""

    def __init__(self, n_embd):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_embd, n_embd), nn.GELU(), nn.Linear(n_embd, n_embd), nn.LayerNorm(n_embd))

    def forward(self, h):
        return self.net(h)


def thinker(mode, n_embd):
    """The module that turns a hidden state into the next thought: none for coconut (the state itself)."""
    return {"pause": PauseThought, "distill": Projector}[mode](n_embd) if mode in ("pause", "distill") else None


@dataclass
class ThoughtBatch:
    """Rows left-padded so that each prompt ends at column start - 1: thought j of each row sits in column start + j."""
    idx: torch.Tensor      # (B, T) input ids; <|pad|> on the left, in thought columns and after a row's end
    mask: torch.Tensor     # (B, T) True at real positions, thoughts included
    pos: torch.Tensor      # (B, T) position ids, counting real positions only
    targets: torch.Tensor  # (B, T) the next token, -1 where nothing is learned (the prompt, thoughts, forced <|eot|>)
    thought: torch.Tensor  # (B, T) True where a thought is fed
    start: int             # the first thought column

    def to(self, device):
        return ThoughtBatch(self.idx.to(device), self.mask.to(device), self.pos.to(device), self.targets.to(device),
                            self.thought.to(device), self.start)


def thought_layout(tok, examples, stage, c_thought, stages):
    """(question, steps, answer) examples at curriculum stage `stage`: at stage k <= stages the first k steps become
    k x c_thought thoughts (so many also where the chain has fewer steps) and the others stay text; after the last
    stage (stage > stages) every step goes, for stages x c_thought thoughts. The position before each thought learns
    nothing; the last thought learns the first remaining token, unless that is <|eot|> (which inference then feeds
    itself)."""
    rows = []
    for q, steps, answer in examples:
        k = len(steps) if stage > stages else min(stage, len(steps))
        K = min(stage, stages) * c_thought
        head = prompt(tok, q, 1)
        rest = tok.encode(chain_text(steps[k:])) if k < len(steps) else []
        seq = head + [tok.pad] * K + rest + [tok.eot] + tok.encode(" " + answer) + [tok.eos]
        rows.append((seq, len(head), K, bool(rest)))
    start = max(P for _, P, _, _ in rows)
    T = max(start - P + len(seq) for seq, P, _, _ in rows) - 1  # the last token is only ever predicted
    B = len(rows)
    off = lambda: torch.zeros(B, T, dtype=torch.bool)  # noqa: E731
    b = ThoughtBatch(torch.full((B, T), tok.pad), off(), torch.zeros(B, T, dtype=torch.long), torch.full((B, T), -1),
                     off(), start)
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


def thought_forward(model, b, think=None):
    """Logits (B, T, V) of a ThoughtBatch, each thought being think(final hidden state at the previous position):
    the columns before the first thought in one pass, then one pass per thought column, then the rest, all through
    one KV cache (so the cost is one pass over the sequence, in pieces); gradients flow through the thoughts."""
    think = think or (lambda h: h)
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


def thought_loss(model, think, b):
    """A baseline's training loss (as colar.sft_loss returns one): the mean cross-entropy over a ThoughtBatch's
    targets, no latent loss, no statistics."""
    logits = thought_forward(model, b, think)
    ce = F.cross_entropy(logits.flatten(0, 1).float(), b.targets.flatten(), ignore_index=-1)
    return ce, torch.zeros((), device=ce.device), {}


# --- iCoT, stepwise internalization --------------------------------------------------------------------------------
def icot_removed(step, remove_every):
    """Chain tokens scheduled for removal at a (0-based) training step: one more every remove_every steps."""
    return step // remove_every


def removal_offsets(n, lam, generator=None, longest=100):
    """n extra removals o = 0, 1, ..., drawn with P(o) = (1 - e^-lam) e^(-lam o), the mass beyond `longest` - 1 put
    on it; lam <= 0 turns smoothing off (all 0)."""
    if lam <= 0:
        return torch.zeros(n, dtype=torch.long)
    o = torch.arange(longest, dtype=torch.float64)
    p = (1 - torch.exp(torch.tensor(-lam, dtype=torch.float64))) * torch.exp(-lam * o)
    p[-1] += 1 - p.sum()
    return torch.multinomial(p, n, replacement=True, generator=generator)


def shorten_chains(encoded, removed, offsets):
    """Encoded (question, chain, answer) examples with each chain's first removed + offsets[i] tokens cut."""
    return [(q, chain[removed + int(o):], a) for (q, chain, a), o in zip(encoded, offsets)]


# --- the curricula, as the trainer sees them -----------------------------------------------------------------------
class Curriculum:
    """A baseline's schedule in train_sft.py: where training is at a step (coconut, pause: the stage; icot: the chain
    tokens removed), whether the optimizer restarts there, the step's rows, and whether a checkpoint there may be
    selected (icot: only once every chain is gone). cfg: the trainer's config; longest: the longest encoded chain."""

    def __init__(self, cfg, longest):
        self.cfg, self.longest = cfg, longest
        self.thoughts = inference_thoughts(cfg.mode, cfg.stages, cfg.c_thought)
        self.stage_steps = cfg.stage_steps or max(1, cfg.max_steps // (cfg.stages + 2))  # the last phase: 2 shares
        self.remove_every = cfg.remove_every or max(1, 2 * cfg.max_steps // (3 * max(1, longest)))

    def at(self, step):
        if self.cfg.mode == "distill":  # no curriculum: always the layout after the last stage
            return self.cfg.stages + 1
        if self.thoughts:
            return coconut_stage(step, self.stage_steps, self.cfg.stages)
        return icot_removed(step, self.remove_every)

    def restarts(self, step):
        """A new stage, or one more token removed while chains remain: the optimizer starts afresh."""
        return step > 0 and self.at(step) != self.at(step - 1) and (self.thoughts or self.at(step) <= self.longest)

    def batch(self, tok, examples, encoded, step, generator):
        """The rows of a micro-batch: examples (question, steps, answer) and the same encoded."""
        if self.thoughts:
            student = thought_layout(tok, examples, self.at(step), self.cfg.c_thought, self.cfg.stages)
            if self.cfg.mode == "distill":
                return DistillBatch(colar.layout(tok, encoded, 1), student, answer_leads(tok, examples))
            return student
        offsets = removal_offsets(len(encoded), self.cfg.removal_lambda, generator)
        return colar.layout(tok, shorten_chains(encoded, self.at(step), offsets), 1)

    def selectable(self, step):
        """Whether the checkpoint after `step` steps may be selected by validation."""
        return self.thoughts > 0 or self.at(step - 1) >= self.longest


# --- Distill (CODI) ------------------------------------------------------------------------------------------------
@dataclass
class DistillBatch:
    """The same examples twice: as CoT rows (the teacher) and as rows of thoughts (the student); lead (B,): the
    tokens between <|eot|> and each answer's value (answer_leads)."""
    teacher: colar.Batch
    student: ThoughtBatch
    lead: torch.Tensor

    def to(self, device):
        return DistillBatch(self.teacher.to(device), self.student.to(device), self.lead.to(device))

    @property
    def mask(self):  # every real position of both, for the token count
        return torch.cat([self.teacher.mask.flatten(), self.student.mask.flatten()])


@contextlib.contextmanager
def block_outputs(model):
    """The output of each transformer block in the last forward call that ran it, kept in a list while inside."""
    outs = [None] * len(model.blocks)
    hooks = [blk.register_forward_hook(lambda m, args, out, k=k: outs.__setitem__(k, out))
             for k, blk in enumerate(model.blocks)]
    try:
        yield outs
    finally:
        for hook in hooks:
            hook.remove()


def hidden_distance(student, teacher):
    """The mean over blocks of smooth-L1(student, teacher) / std(teacher): lists of (B, C) states, one per block."""
    parts = [F.smooth_l1_loss(h_s, h_t) / h_t.std().clamp(min=1e-6) for h_s, h_t in zip(student, teacher)]
    return sum(parts) / len(parts)


def answer_leads(tok, examples):
    """(B,) the tokens that come after <|eot|> before each answer's value: the answer is written " " + answer, a
    space token of its own with the char, number and place tokenizers (1), part of the first word with GPT-2's (0)."""
    return torch.tensor([max(0, len(tok.encode(" " + a)) - len(tok.encode(a))) for _, _, a in examples])


def distill_loss(model, projector, b, weight=20.0):
    """CODI's loss of a DistillBatch: (teacher CE + student CE + weight x hidden-state distance, 0, stats)."""
    t, s = b.teacher, b.student
    rows = torch.arange(t.idx.size(0), device=t.idx.device)
    with block_outputs(model) as outs:
        _, ce_teacher, _ = model(t.idx, mask=t.mask, targets=t.targets)
        teacher = [o[rows, t.eot_at + 1 + b.lead].detach() for o in outs]  # where the answer's value is predicted
    with block_outputs(model) as outs:  # the student's <|eot|> opens the last piece of thought_forward
        logits = thought_forward(model, s, projector)
        student = [o[rows, b.lead] for o in outs]
    ce_student = F.cross_entropy(logits.flatten(0, 1).float(), s.targets.flatten(), ignore_index=-1)
    dist = hidden_distance(student, teacher)
    stats = {"teacher": ce_teacher.item(), "student": ce_student.item(), "distance": dist.item()}
    return ce_teacher + ce_student + weight * dist, torch.zeros((), device=dist.device), stats

"""
A picture of what CoLaR's latents hold: how much each latent resembles each token of the reference chain, per speed.

For one question, at each speed c, the model answers greedily; each latent it feeds itself (k = 1..K) is compared,
by cosine similarity, with the input embedding of every token of the question's reference chain, and the result is
drawn as a heatmap per speed: rows = latents, columns = chain tokens. In row k the cells of chunk k are outlined
(tokens (k-1)c .. kc-1, whose compressed embedding latent k was trained to predict), so a dark outlined cell says:
latent k resembles its own chunk. Each panel's title gives the answer and whether it is right.

    python latents.py --ckpt out/colar                                  # the first question of data/synth/val.txt
    python latents.py --ckpt out/colar --c 1,5 --data_dir data/gsm8k --split test --out results/latents_gsm8k.png
    python latents.py --ckpt out/colar --question "3+4*2||<<3+4=7>> <<7*2=4>> #### 4"

With --probe N, no picture: on the first N examples of --split, per speed, where compressed reasoning fails,
reading or writing. "read" is the accuracy when the model is fed the true compressed chain (each chunk's
sum / sqrt(n), as in SFT), then <|eot|>, and answers greedily (checked teacher-forced: every answer token the argmax);
"generated" the greedy accuracy with its own latents. Per latent position k, "nearest" says how often the k-th
generated latent is at least as near (cosine) to its own example's true chunk k as to the true chunk k of any other
probed example (an identical chunk of another example ties, and counts as a hit); "written" the same for the latent
the head predicts from the true chain before it (teacher-forced: one step of writing, no earlier error carried).
Digit by digit, a written latent is also compared with its true chunk with one digit swapped for each other digit of
the same place: a digit is written when the true chunk is strictly the nearest, so a latent that leaves a digit out
scores about 1 in 10 on it; the positions where a digit falls below 90% are printed, a figure per token, beside the
same measure for the LM head's chunk label at that position (low too: the model does not compute the digit; high:
the latent head does not write what the model holds).

    python latents.py --ckpt out/mult4/colar --data_dir data/mult4 --probe 200

The image needs matplotlib, an optional dependency (pip install matplotlib, or pip install .[plot]).
"""
import os
from dataclasses import dataclass
from statistics import fmean

import torch
import torch.nn.functional as F

import colar
from common import UserError, check_flags, check_picture, parse_config, pick_device, run_cli, trained_speeds
from compress import compress
from data.format import chain_text, parse_line, read_split
from sample import answer_questions, answered, load_model


@dataclass
class LatentsConfig:
    ckpt: str = "out/colar"          # CoLaR checkpoint file or run folder (its best checkpoint by validation)
    question: str = ""               # one example, as a line `question||<<step>> <<step>> #### answer`; "": see --split
    data_dir: str = "data/synth"     # without --question: the first example of data_dir/split.txt
    split: str = "val"               # val, test or train
    c: str = ""                      # speeds, comma-separated (e.g. 1,3,5); "": those the checkpoint was trained on
    max_latents: int = 64            # cap on latents per answer
    out: str = "results/latents.png"  # the PNG written
    probe: int = 0                   # > 0: no picture; reading and writing measured on this many --split examples
    device: str = "auto"             # auto, cpu, cuda, mps


def similarity(latents, embeddings):
    """(K, C) latents and (T, C) token embeddings -> (K, T) cosine similarities."""
    return F.normalize(latents.float(), dim=-1) @ F.normalize(embeddings.float(), dim=-1).T


def chunk_spans(K, T, c):
    """For each latent k = 1..K, the columns [start, end) of its chunk among T chain tokens at speed c (empty past
    the chain's end, where a latent has no chunk of its own)."""
    return [(min(k * c, T), min((k + 1) * c, T)) for k in range(K)]


def true_chunks(model, b, c, pool="sqrt"):
    """The compressed embeddings of a Batch's text chains at speed c: (B, K, C), zero past a row's chain, and the
    (B, K) mask of the real ones."""
    z, zmask, _ = compress(model.wte(b.chain), b.chain, b.chain_mask, c, pool)
    return z, zmask


@torch.no_grad()
def true_chain_logits(model, tok, examples, c, pool="sqrt"):
    """The logits (B, T, V) and hidden states (B, T, C) of the examples laid out at speed c with their true compressed
    chains in the latent slots (as in SFT), the Batch, and the compressed chains (true_chunks)."""
    b = colar.layout(tok, colar.encode(tok, examples, "colar"), c, latent=True).to(model.wte.weight.device)
    z, zmask = true_chunks(model, b, c, pool)
    x = model.wte(b.idx).masked_scatter(b.latent_in[..., None], z[zmask])
    logits, _, h = model(embeds=x, mask=b.mask)
    return logits, h, b, z, zmask


def written_latents(head, h, b):
    """Per example, the latents the head writes (greedy: mu, in embedding space) from the true chain before each
    one: the k-th is predicted where true chunk k is the target (b.latent_out), so it can be compared with it."""
    pred = head.sample(h, temperature=0.0)  # (B, T, C)
    return [list(pred[i][b.latent_out[i]]) for i in range(len(pred))]


def nearest_rates(latents_of, z, zmask):
    """Per latent position k: the fraction of examples with a k-th latent (latents_of[i][k]) that is at least as near
    to their own true chunk k as to the true chunk k of any other example that has one, whether or not its own
    latents reach k (see the top of the file); it stops where fewer than two examples have a true chunk k or none a
    k-th latent."""
    rates = []
    for k in range(zmask.size(1)):
        cands = zmask[:, k].nonzero().squeeze(1).tolist()  # the examples with a true chunk k
        rows = [i for i in cands if len(latents_of[i]) > k]
        if len(cands) < 2 or not rows:
            break
        mine = torch.stack([latents_of[i][k] for i in rows]).to(z.device)  # (n, C)
        sims = similarity(mine, z[cands, k])  # (n, m): latent of rows[r] against true chunk k of cands[j]
        own = sims[range(len(rows)), [cands.index(i) for i in rows]]  # (another's identical chunk ties: a hit)
        rates.append((own >= sims.max(1).values - 1e-6).float().mean().item())
    return rates


def digit_family(tok, i):
    """The ids a digit token can be swapped for with its place kept: the ten digits of its place (the "place"
    tokenizer) or the ten digit characters ("char"); [] for any other token or tokenizer."""
    if tok.kind not in ("char", "place"):
        return []
    if tok.kind == "place" and i >= tok.place0:
        first = i - (i - tok.place0) % 10
        return list(range(first, first + 10))
    digits = [tok.encode(str(d))[0] for d in range(10)]  # single digits: their characters' ids
    return digits if i in digits else []


def per_digit(tok, chains, c, reach, scores):
    """Per chunk position k, per token slot j: the fraction of examples (those that reach position k: reach[i] > k)
    in which the slot's true digit scores strictly highest among the ten digits of its place (a tie is no hit);
    scores(i, k, chunk, j, family) gives their (10,) scores. None where no example has a digit in that slot."""
    rates = []
    for k in range(-(-max(len(ids) for ids in chains) // c)):
        hits, seen = [0] * c, [0] * c
        for i, ids in enumerate(chains):
            chunk = ids[k * c:(k + 1) * c]
            for j, t in enumerate(chunk if reach[i] > k else []):
                family = digit_family(tok, t)
                if family:
                    x, own = scores(i, k, chunk, j, family), family.index(t)
                    hits[j] += bool(x[own] > torch.cat([x[:own], x[own + 1:]]).max())
                    seen[j] += 1
        rates.append([hits[j] / seen[j] if seen[j] else None for j in range(c)])
    return rates


def digit_rates(latents_of, chains, embeddings, tok, c):
    """Per latent position k, per token slot j of chunk k: the fraction of examples whose k-th latent is nearer
    (cosine) to its own true chunk k than to every chunk made from it by swapping digit j for another digit of its
    place, the other tokens kept: whether that digit is written at all (a latent that leaves it out scores about
    1 in 10). chains: per example its chain's token ids."""
    def scores(i, k, chunk, j, family):
        swapped = embeddings[chunk].sum(0) + embeddings[family] - embeddings[chunk[j]]  # (10, C): digit j swapped
        return F.normalize(swapped, dim=-1) @ F.normalize(latents_of[i][k].to(swapped), dim=-1)
    return per_digit(tok, chains, c, [len(lat) for lat in latents_of], scores)


def label_rates(logits_of, chains, tok, c):
    """The same for the LM head where latent k is written (trained, with chunk labels, to name a random token of
    chunk k): how often its logits rank the true digit strictly first among the digits of its place. Low where
    digit_rates is low: the model's hidden state lacks the digit; high: the latent head fails to write what the
    model holds. logits_of: per example, (K, V) logits at its latents' positions."""
    def scores(i, k, chunk, j, family):
        return logits_of[i][k, family]
    return per_digit(tok, chains, c, [len(x) for x in logits_of], scores)


def answered_right(logits, b):
    """Per row, whether every answer token and the closing <|eos|> after <|eot|> is the argmax."""
    after = torch.arange(b.idx.size(1), device=logits.device)[None] > b.eot_at[:, None]  # the answer and <|eos|>
    judged = after & (b.targets >= 0)
    return ((logits.argmax(-1) == b.targets) | ~judged).all(1).tolist()


def read_true_chain(model, tok, examples, c, pool="sqrt"):
    """For each example, whether the model answers right when fed its true compressed chain at speed c and then
    <|eot|>: teacher-forced, every answer token and the closing <|eos|> must be the argmax (what greedy decoding
    would then write). Returns a list of bools."""
    logits, _, b, _, _ = true_chain_logits(model, tok, examples, c, pool)
    return answered_right(logits, b)


@torch.no_grad()
def probe(model, head, tok, examples, c, max_latents=64, pool="sqrt"):
    """Reading against writing at speed c (see the top of the file): {"read", "generated", "nearest" and "written":
    [rate per latent position], "digits" and "labels": [[rate per token slot] per position], "latents": mean
    generated, "chunks": mean true}."""
    logits, h, b, z, zmask = true_chain_logits(model, tok, examples, c, pool)
    read = answered_right(logits, b)
    writes = written_latents(head, h, b)
    written = nearest_rates(writes, z, zmask)
    chains = [b.chain[i][b.chain_mask[i]].tolist() for i in range(len(examples))]  # the ids the chunks were made of
    digits = digit_rates(writes, chains, model.wte.weight.detach(), tok, c)
    labels = label_rates([logits[i][b.latent_out[i]] for i in range(len(examples))], chains, tok, c)
    results = answer_questions(model, tok, [q for q, _, _ in examples], c, head=head, max_latents=max_latents,
                               keep_latents=True)
    generated = [answered(r, a) for r, (_, _, a) in zip(results, examples)]
    nearest = nearest_rates([r["latents"] for r in results], z, zmask)
    n = max(1, len(examples))
    return {"read": sum(read) / n, "generated": sum(generated) / n, "nearest": nearest, "written": written,
            "digits": digits, "labels": labels, "latents": sum(r["length"] for r in results) / n,
            "chunks": zmask.sum().item() / n}


def token_label(tok, i):
    return tok.decode([i]).replace(" ", "␣").replace("\n", "\\n") or "''"


def draw(panels, labels, path):
    """One heatmap per speed, stacked, with each latent's own chunk outlined; written as a PNG to `path`."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle
    except ImportError:
        raise UserError("the picture needs matplotlib: pip install matplotlib (or pip install .[plot])") from None
    T = len(labels)
    heights = [max(1, p["sims"].size(0)) * 0.28 + 0.9 for p in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(6.0, 0.2 * T + 2.0), sum(heights) + 0.4), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, p in zip(axes[:, 0], panels):
        K, c = p["sims"].size(0), p["c"]
        im = ax.imshow(p["sims"].numpy() if K else torch.zeros(1, T).numpy(), cmap="RdBu_r", vmin=-1, vmax=1,
                       aspect="auto", interpolation="nearest")
        for k, (start, end) in enumerate(chunk_spans(K, T, c)):
            if end > start:
                ax.add_patch(Rectangle((start - 0.5, k - 0.5), end - start, 1, fill=False, edgecolor="black", lw=1.2))
        verdict = "right" if p["correct"] else f"wrong, reference {p['reference']}"
        answer = p["answer"] if len(p["answer"]) <= 24 else p["answer"][:23] + "…"  # an unfinished answer can be long
        ax.set_title(f"c = {c}: {K} latents" + (" (hit the cap)" if p["hit_cap"] else "")
                     + f", answer {answer!r} ({verdict})", fontsize=9)
        ax.set_yticks(range(K))
        ax.set_yticklabels([str(k + 1) for k in range(K)], fontsize=6)
        ax.set_ylabel("latent k", fontsize=8)
        ax.set_xticks(range(T))
        ax.set_xticklabels(labels, fontsize=7, family="monospace")
    fig.colorbar(im, ax=axes[:, 0].tolist(), shrink=0.8, label="cosine(latent, token embedding)")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)


def main(cfg):
    check_flags(cfg, positive=("max_latents",), nonnegative=("probe",))
    try:
        speeds = [int(v) for v in cfg.c.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--c must be comma-separated whole numbers, got {cfg.c!r}") from None
    if speeds and min(speeds) < 1:
        raise UserError(f"--c must be >= 1 for a CoLaR model, got {cfg.c}")
    if cfg.probe > 0:
        return main_probe(cfg, speeds)
    check_picture(cfg.out, "--out")  # before the model answers, not when the picture is drawn
    try:
        import matplotlib  # noqa: F401  (drawn at the end: found missing before the model answers)
    except ImportError:
        raise UserError("the picture needs matplotlib: pip install matplotlib (or pip install .[plot])") from None
    if cfg.question:
        question, steps, answer = parse_line(cfg.question, "--question")
    else:
        examples = read_split(os.path.join(cfg.data_dir, f"{cfg.split}.txt"))
        if not examples:
            raise UserError(f"{cfg.data_dir}/{cfg.split}.txt has no examples")
        question, steps, answer = examples[0]
    model, head, tok, ckpt = load_model(cfg.ckpt, pick_device(cfg.device))
    if head is None:
        raise UserError(f"{ckpt['path']} has no latent head: latents.py needs a CoLaR checkpoint (mode colar)")
    speeds = speeds or trained_speeds(ckpt["config"])
    ids = tok.encode(chain_text(steps))
    if not ids:
        raise UserError("the example has an empty chain: there is nothing to compare the latents with")
    embeddings = model.wte.weight[ids].detach().cpu()  # (T, C)
    print(f"question: {question}\nchain   : {chain_text(steps)}  ({len(ids)} tokens), answer {answer}")
    panels = []
    for c in speeds:
        r = answer_questions(model, tok, [question], c, head=head, max_latents=cfg.max_latents, keep_latents=True)[0]
        Z = torch.stack(r["latents"]).cpu() if r["latents"] else torch.zeros(0, embeddings.size(1))  # (K, C)
        sims = similarity(Z, embeddings)  # (K, T)
        own = [sims[k, s:e].mean().item() for k, (s, e) in enumerate(chunk_spans(len(sims), len(ids), c)) if e > s]
        panels.append({"c": c, "sims": sims, "answer": r["answer"], "reference": answer, "hit_cap": r["hit_cap"],
                       "correct": answered(r, answer)})
        print(f"c={c}: {len(sims)} latents, answer {r['answer']!r} ({'right' if panels[-1]['correct'] else 'wrong'}); "
              f"mean cosine with its own chunk {sum(own) / max(1, len(own)):+.3f}, with every chain token "
              f"{sims.mean().item() if sims.numel() else 0.0:+.3f}")
    draw(panels, [token_label(tok, i) for i in ids], cfg.out)
    print(f"wrote {cfg.out}")
    return panels


def chunk_texts(tok, steps, c):
    """A chain's chunks at speed c as text, one per latent: ['<<6', '60', '42', '>> ', ...] at c = 2."""
    ids = tok.encode(chain_text(steps))
    return [tok.decode(ids[start:end]) for start, end in chunk_spans(-(-len(ids) // c), len(ids), c)]


def rates_text(rates):
    """Nearest-own-chunk rates per position as '73%, by position: 100 62 ...' (the mean first)."""
    return f"{100 * fmean(rates or [0]):.0f}%, by position: " + " ".join(f"{100 * x:.0f}" for x in rates)


def digits_text(digits, labels, below=0.9):
    """The positions where a digit written from the true chain falls below `below`, one figure per token of the
    chunk ('-': no digit), then the LM head's chunk label at the same positions unless labels is None (a model
    trained without chunk labels): '9: 100/12 | ...; the LM head's chunk label there: 9: 100/14 | ...'."""
    low = [k for k, r in enumerate(digits) if any(x is not None and x < below for x in r)]
    if not low:
        return f"none (every digit at {100 * below:.0f}% or more)"
    def show(rates):
        return " | ".join(f"{k}: " + "/".join("-" if x is None else f"{100 * x:.0f}" for x in rates[k]) for k in low)
    return show(digits) + ("" if labels is None else f"; the LM head's chunk label there: {show(labels)}")


def main_probe(cfg, speeds):
    examples = read_split(os.path.join(cfg.data_dir, f"{cfg.split}.txt"))[:cfg.probe]
    if not examples:
        raise UserError(f"{cfg.data_dir}/{cfg.split}.txt has no examples")
    model, head, tok, ckpt = load_model(cfg.ckpt, pick_device(cfg.device))
    if head is None:
        raise UserError(f"{ckpt['path']} has no latent head: --probe needs a CoLaR checkpoint (mode colar)")
    pool, labelled = ckpt["config"].get("pool", "sqrt"), ckpt["config"].get("chunk_labels", True)
    speeds = speeds or trained_speeds(ckpt["config"])
    encoded = colar.encode(tok, examples, "colar")
    for c in speeds:  # each example with its true chain at each speed fits the context, before any is run
        length = colar.layout(tok, encoded, c, latent=True).idx.size(1)
        if length > model.cfg.block_size:
            raise UserError(f"at c = {c} the longest of these examples with its true chain takes {length} positions, "
                            f"but the model's context is {model.cfg.block_size}: probe data of the task it was "
                            f"trained on (--data_dir)")
    out = {}
    print(f"{ckpt['path']}, {len(examples)} examples of {cfg.data_dir}/{cfg.split}.txt, greedy")
    for c in speeds:
        r = out[c] = probe(model, head, tok, examples, c, cfg.max_latents, pool)
        print(f"c={c}: read (true chain) {100 * r['read']:.1f}% | generated {100 * r['generated']:.1f}% | latents "
              f"{r['latents']:.1f} for {r['chunks']:.1f} chunks\n  generated latent nearest its own chunk "
              f"{rates_text(r['nearest'])}\n  written from the true chain, nearest its own chunk "
              f"{rates_text(r['written'])}\n  positions with a digit written below 90% (per digit): "
              f"{digits_text(r['digits'], r['labels'] if labelled else None)}\n  the first example's chunks: "
              + " | ".join(t.replace(" ", "_") for t in chunk_texts(tok, examples[0][1], c)))
    return out


if __name__ == "__main__":
    run_cli(main, parse_config(LatentsConfig))

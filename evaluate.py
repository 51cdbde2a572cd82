"""
Evaluate a checkpoint on a data split: accuracy and mean reasoning length, greedy and/or sampled over seeds.
Writes JSON records (merged into --out when it exists, each row (method, c) as soon as its decodings are measured),
one per (method, c, decode):

    {"method", "c", "decode", "split", "n", "accuracy", "mean_len", "ci95", "len_ci95", "seeds", "checkpoint",
     "checkpoint_sha256", "settings", "seconds"}

An answer is right when <|eos|> closed it and it equals the reference (as numbers where both are: data/format.py's
answers_match). `mean_len` is the reasoning length: chain tokens between <|bot|> and <|eot|> (0 for No-CoT), or
latents fed (CoLaR, whose records add `hit_cap`, the fraction of questions cut off while thinking: at --max_latents,
or at the end of the model's context). With several seeds, accuracy and mean_len are means over seeds, and ci95 and
len_ci95 the half-widths of their 95% t-intervals.

    python evaluate.py --ckpt out/cot --split test --decode greedy,sampled --out results/cot.json
    python evaluate.py --ckpt out/colar --c 1,2,3,4,5 --out results/colar.json

--skip_done true leaves out each record --out already holds for the same checkpoint bytes, split, seeds and
`settings` (a recipe rerun after an interruption): the questions and answers (their hash), --max_latents and, sampled,
the temperatures, top-p and --sigma_min. A record without `settings` is evaluated again.
"""
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass

from tqdm import tqdm

from baselines import inference_thoughts
from common import UserError, parse_config, read_records, pick_device, run_cli, trained_speeds
from data.format import read_split
from latent_head import LatentHead, log_sigma_floor
from sample import check_prompts, check_sampling, load_model, score

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def t975(df):
    """The 97.5% quantile of Student's t: a table up to 10 degrees of freedom, a Cornish-Fisher expansion to the third
    order beyond (within 2e-4 of the exact value there)."""
    if df in T975:
        return T975[df]
    z = 1.959964
    return (z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * df ** 3))


def ci95(values):
    """Half-width of the 95% confidence interval of the mean (Student t), None for fewer than 2 values."""
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return t975(n - 1) * sd / math.sqrt(n)


def evaluate(model, tok, examples, method, c, decode, seeds=(0,), split="test", checkpoint="",
             temperature=1.0, top_p=0.9, batch_size=256, head=None, max_latents=64, latent_temperature=1.0, thoughts=0):
    """One record: greedy decoding once, or sampled decoding once per seed (answer tokens at `temperature` and
    `top_p`, latents at `latent_temperature`, the stop decision sampled like a token). thoughts > 0: a baseline's
    fixed number of thoughts, `head` its thought module (None for Coconut)."""
    t0 = time.time()
    latent = dict(max_latents=max_latents, thoughts=thoughts, think=head if thoughts else None)
    head = None if thoughts else head
    if decode == "greedy":
        runs = [score(model, tok, examples, c, 0.0, 1.0, 0, batch_size, head, **latent)]
    else:
        runs = [score(model, tok, examples, c, temperature, top_p, s, batch_size, head, **latent,
                      latent_temperature=latent_temperature, stop="sampled") for s in seeds]
    accs, lens = [a for a, _, _ in runs], [n for _, n, _ in runs]
    record = {"method": method, "c": c, "decode": decode, "split": split, "n": len(examples),
              "accuracy": sum(accs) / len(accs), "mean_len": sum(lens) / len(lens), "ci95": ci95(accs),
              "len_ci95": ci95(lens), "seeds": [] if decode == "greedy" else list(seeds), "checkpoint": checkpoint,
              "seconds": round(time.time() - t0, 2)}
    if head is not None and c >= 1:
        record["hit_cap"] = sum(h for _, _, h in runs) / len(runs)
    return record


def merge_records(path, records):
    """Write records to the JSON list at `path`, replacing those with the same (method, c, decode, split); returns
    the records replaced."""
    key = lambda r: (r["method"], r["c"], r["decode"], r["split"])  # noqa: E731
    old = read_records(path, "--out")
    new_keys = {key(r) for r in records}
    merged = [r for r in old if key(r) not in new_keys] + records
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(merged, f, indent=1)
        f.flush()
        os.fsync(f.fileno())  # on disk before it replaces the old file, as the checkpoints are
    os.replace(path + ".tmp", path)
    return [r for r in old if key(r) in new_keys]


def format_record(r):
    ci = f" ± {100 * r['ci95']:.1f}" if r["ci95"] is not None else ""
    len_ci = f" ± {r['len_ci95']:.2f}" if r.get("len_ci95") is not None else ""
    cap = f", hit_cap {100 * r['hit_cap']:.1f}%" if "hit_cap" in r else ""
    return (f"{r['method']:>8} c={r['c']} {r['decode']:>7} {r['split']}: accuracy {100 * r['accuracy']:.1f}%{ci} "
            f"(n={r['n']}), mean_len {r['mean_len']:.2f}{len_ci}{cap}, {r['seconds']:.1f}s")


@dataclass
class EvalConfig:
    ckpt: str = "out/cot"          # checkpoint file or run folder (its best checkpoint by validation)
    data_dir: str = ""             # folder with the split; default: the one the model was trained on
    split: str = "test"            # train, val or test
    n: int = 0                     # evaluate the first n examples (0: all)
    method: str = ""               # name in the records; default: the training mode (cot, nocot, colar)
    c: str = ""                    # CoLaR: comma-separated speeds to evaluate (default: those it was trained on)
    decode: str = "greedy,sampled" # comma-separated: greedy, sampled
    seeds: str = "0,1,2,3,4"       # seeds for sampled decoding
    temperature: float = 1.0       # sampled decoding: answer-token temperature
    top_p: float = 0.9             # sampled decoding: answer-token nucleus
    latent_temperature: float = 1.0  # sampled decoding: latent noise scale (greedy uses the mean)
    max_latents: int = 64          # CoLaR: cap on latents per question
    sigma_min: float = -1.0        # CoLaR: floor on the latent sigma for sampling (-1: the checkpoint's own)
    text_cot: bool = False         # CoLaR: also decode a text chain of thought (c = 1, LM head), for comparison
    batch_size: int = 256          # questions decoded together
    out: str = ""                  # JSON file to merge the records into (e.g. results/synth.json)
    skip_done: bool = False        # skip each evaluation --out holds for these checkpoint bytes, questions and settings
    device: str = "auto"           # auto, cpu, cuda, mps


def parse_ints(text, flag):
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--{flag} must be comma-separated integers, got {text!r}") from None


def no_repeats(values, flag):
    """values, refused when one comes twice (a seed twice narrows the interval with a copy of a pass; a speed or a
    decoding twice writes two records of one evaluation)."""
    twice = sorted({v for v in values if values.count(v) > 1}, key=values.index)
    if twice:
        raise UserError(f"--{flag} lists {', '.join(map(str, twice))} more than once")
    return values


def read_examples(data_dir, split, n):
    """The first n examples (0: all) of data_dir/split.txt; an empty split is refused."""
    path = os.path.join(data_dir, f"{split}.txt")
    examples = read_split(path)
    if not examples:
        raise UserError(f"no examples in {path}: nothing to evaluate")
    return examples[:n] if n > 0 else examples


def settings(cfg, decode, questions_sha256):
    """What decides a record besides the checkpoint: the questions with their answers (questions_sha256), the latent
    cap and, for sampled decoding, everything that shapes the samples besides the seeds (a record's own field)."""
    out = {"questions_sha256": questions_sha256, "max_latents": cfg.max_latents}
    if decode == "sampled":
        out.update(temperature=cfg.temperature, top_p=cfg.top_p, latent_temperature=cfg.latent_temperature,
                   sigma_min=cfg.sigma_min, batch_size=cfg.batch_size)  # (one generator runs through the batches)
    return out


def main(cfg):
    decodes = [d for d in cfg.decode.split(",") if d]
    if not decodes or set(decodes) - {"greedy", "sampled"}:
        raise UserError(f"--decode must be a comma-separated list of greedy, sampled; got {cfg.decode!r}")
    no_repeats(decodes, "decode")
    seeds = parse_ints(cfg.seeds, "seeds")
    if "sampled" in decodes and not no_repeats(seeds, "seeds"):
        raise UserError("sampled decoding needs at least one seed")
    asked = no_repeats(parse_ints(cfg.c, "c"), "c")
    if cfg.c and (not asked or min(asked) < 1):
        raise UserError(f"--c values must be >= 1, got {cfg.c!r}")
    if cfg.n < 0 or cfg.max_latents < 0 or cfg.batch_size <= 0:
        raise UserError(f"need --n >= 0, --max_latents >= 0 and --batch_size > 0, got {cfg.n}, {cfg.max_latents} and "
                        f"{cfg.batch_size}")
    if "sampled" in decodes:
        check_sampling(cfg.temperature, cfg.top_p, cfg.latent_temperature)
    if cfg.skip_done and not cfg.out:
        raise UserError("--skip_done true needs --out, the records file to look in")
    old = read_records(cfg.out, "--out") if cfg.out else []  # a file that could not take the records: refused now
    device = pick_device(cfg.device)
    examples = read_examples(cfg.data_dir, cfg.split, cfg.n) if cfg.data_dir else None  # before the model is read
    model, head, tok, ckpt = load_model(cfg.ckpt, device)
    run = ckpt["config"]
    if cfg.sigma_min >= 0 and isinstance(head, LatentHead):  # e.g. to sample an SFT model with an RL run's floor
        head.log_sigma_min = log_sigma_floor(cfg.sigma_min)
    mode = run.get("mode", "cot") + ("_rl" if "rl_config" in ckpt else "")  # the method name of its records
    thoughts = inference_thoughts(mode, run.get("stages", 0), run.get("c_thought", 0))
    if thoughts:
        if cfg.c:
            raise UserError(f"--c is for CoLaR checkpoints; {ckpt['path']} is a {mode} model ({thoughts} thoughts)")
        cs = [0]  # (c = 0 in its records: a baseline has no speed)
    elif head is None:
        if cfg.c:
            raise UserError(f"--c is for CoLaR checkpoints; {ckpt['path']} was trained in {mode} mode")
        cs = [0 if mode == "nocot" else 1]
    else:
        trained = trained_speeds(run)
        cs = asked or trained
        unseen = sorted(set(cs) - set(trained))
        if unseen:
            print(f"warning: c = {unseen} was never trained (trained: {trained}); evaluating anyway")
    if examples is None:  # the split of the data the model was trained on
        examples = read_examples(run["data_dir"], cfg.split, cfg.n)
    runs = [(cfg.method or mode, c, d, head) for c in cs for d in decodes]
    if head is not None and cfg.text_cot and not thoughts:  # the same model, thinking in text tokens instead of latents
        runs += [((cfg.method or mode) + "_text", 1, d, None) for d in decodes]
    for c in cs:  # every question fits the model's context at every speed, before the first evaluation
        check_prompts(model, tok, [q for q, _, _ in examples], c, thoughts)
    records, sha = [], ckpt["sha256"]
    qa = hashlib.sha256(json.dumps([[q, a] for q, _, a in examples]).encode()).hexdigest()
    wanted = {d: settings(cfg, d, qa) for d in decodes}
    if cfg.skip_done:  # a record of this very checkpoint (its bytes, not its name), split, seeds, settings
        done = {(r["method"], r["c"], r["decode"]): r for r in old if r.get("checkpoint_sha256") == sha
                and r["split"] == cfg.split and r.get("settings") == wanted.get(r["decode"])
                and r.get("seeds") == ([] if r["decode"] == "greedy" else seeds)}
        records = [done[m, c, d] for m, c, d, _ in runs if (m, c, d) in done]
        for r in records:
            print(f"already in {cfg.out}, skipped: {format_record(r)}")
        runs = [r for r in runs if r[:3] not in done]
    bar = tqdm(runs, desc="evaluating", unit="run", disable=not sys.stderr.isatty())
    for i, (method, c, d, with_head) in enumerate(bar):
        bar.set_postfix_str(f"{method} c={c} {d}")
        r = evaluate(model, tok, examples, method, c, d, seeds, cfg.split, ckpt["path"], cfg.temperature, cfg.top_p,
                     cfg.batch_size, head=with_head, max_latents=cfg.max_latents,
                     latent_temperature=cfg.latent_temperature, thoughts=thoughts)
        tqdm.write(format_record(r))
        records.append({**r, "checkpoint_sha256": sha, "settings": wanted[d]})
        if cfg.out and not any(m == method and k == c for m, k, _, _ in runs[i + 1:]):
            # each row (method, c) as soon as its decodings are measured: an evaluation stopped later keeps it (see
            # --skip_done), and a row's greedy and sampled records are never from two runs
            for old_r in merge_records(cfg.out, [x for x in records if (x["method"], x["c"]) == (method, c)]):
                if old_r.get("checkpoint_sha256") != sha:  # a method name reused for another model: say so
                    tqdm.write(f"replaced a record of {old_r['checkpoint']}: {format_record(old_r)}")
                elif old_r.get("settings") != wanted[old_r["decode"]]:  # e.g. another --data_dir or --n
                    tqdm.write(f"replaced a record of other questions or settings: {format_record(old_r)}")
    if cfg.out and runs:
        print(f"records merged into {cfg.out}")
    return records


if __name__ == "__main__":
    run_cli(main, parse_config(EvalConfig))

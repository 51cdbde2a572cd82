"""
Evaluate a checkpoint on a data split: accuracy and mean reasoning length, greedy and/or sampled over seeds.
Writes JSON records (merged into --out when it exists), one per (method, c, decode):

    {"method", "c", "decode", "split", "n", "accuracy", "mean_len", "ci95", "seeds", "checkpoint", "seconds"}

`mean_len` is the reasoning length: chain tokens between <|bot|> and <|eot|> (0 for No-CoT). With several seeds,
accuracy and mean_len are means over seeds and ci95 is the half-width of the 95% t-interval of the accuracy.

    python evaluate.py --ckpt out/cot --split test --decode greedy,sampled --out results/cot.json
"""
import json
import math
import os
import time
from dataclasses import dataclass

from common import UserError, load_model, parse_config, pick_device, run_cli
from data.format import answers_match, read_split
from sample import answer_questions

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def t975(df):
    """The 97.5% quantile of Student's t: a table up to 10 degrees of freedom, a Cornish-Fisher expansion beyond
    (within 0.001 of the exact value there)."""
    if df in T975:
        return T975[df]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def ci95(values):
    """Half-width of the 95% confidence interval of the mean (Student t), None for fewer than 2 values."""
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return t975(n - 1) * sd / math.sqrt(n)


def score(model, tok, examples, c=1, temperature=0.0, top_p=1.0, seed=0, batch_size=256):
    """(accuracy, mean chain length) of one decoding pass over `examples` (a list of (question, steps, answer))."""
    results = answer_questions(model, tok, [q for q, _, _ in examples], c, temperature, top_p, seed,
                               batch_size=batch_size)
    correct = sum(answers_match(r["answer"], a) for r, (_, _, a) in zip(results, examples))
    return correct / max(1, len(examples)), sum(len(r["chain"]) for r in results) / max(1, len(results))


def evaluate(model, tok, examples, method, c, decode, seeds=(0,), split="test", checkpoint="",
             temperature=1.0, top_p=0.9, batch_size=256):
    """One record: greedy decoding once, or sampled decoding once per seed."""
    t0 = time.time()
    runs = [score(model, tok, examples, c, 0.0, 1.0, 0, batch_size)] if decode == "greedy" else \
        [score(model, tok, examples, c, temperature, top_p, s, batch_size) for s in seeds]
    accs = [a for a, _ in runs]
    return {"method": method, "c": c, "decode": decode, "split": split, "n": len(examples),
            "accuracy": sum(accs) / len(accs), "mean_len": sum(n for _, n in runs) / len(runs),
            "ci95": ci95(accs), "seeds": [] if decode == "greedy" else list(seeds), "checkpoint": checkpoint,
            "seconds": round(time.time() - t0, 2)}


def merge_records(path, records):
    """Write records to the JSON list at `path`, replacing those with the same (method, c, decode, split)."""
    key = lambda r: (r["method"], r["c"], r["decode"], r["split"])  # noqa: E731
    old = []
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
    new_keys = {key(r) for r in records}
    merged = [r for r in old if key(r) not in new_keys] + records
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(merged, f, indent=1)
    os.replace(path + ".tmp", path)


def format_record(r):
    ci = f" ± {100 * r['ci95']:.1f}" if r["ci95"] is not None else ""
    return (f"{r['method']:>8} c={r['c']} {r['decode']:>7} {r['split']}: accuracy {100 * r['accuracy']:.1f}%{ci} "
            f"(n={r['n']}), mean_len {r['mean_len']:.1f}, {r['seconds']:.1f}s")


@dataclass
class EvalConfig:
    ckpt: str = "out/cot"          # checkpoint file or run folder (its best checkpoint by validation)
    data_dir: str = ""             # folder with the split; default: the one the model was trained on
    split: str = "test"            # train, val or test
    n: int = 0                     # evaluate the first n examples (0: all)
    method: str = ""               # name in the records; default: the training mode (cot, nocot)
    decode: str = "greedy,sampled" # comma-separated: greedy, sampled
    seeds: str = "0,1,2,3,4"       # seeds for sampled decoding
    temperature: float = 1.0       # sampled decoding temperature
    top_p: float = 0.9             # sampled decoding nucleus
    batch_size: int = 256          # questions decoded together
    out: str = ""                  # JSON file to merge the records into (e.g. results/synth.json)
    device: str = "auto"           # auto, cpu, cuda, mps


def main(cfg):
    decodes = [d for d in cfg.decode.split(",") if d]
    if not decodes or set(decodes) - {"greedy", "sampled"}:
        raise UserError(f"--decode must be a comma-separated list of greedy, sampled; got {cfg.decode!r}")
    try:
        seeds = [int(s) for s in cfg.seeds.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds must be comma-separated integers, got {cfg.seeds!r}") from None
    if "sampled" in decodes and not seeds:
        raise UserError("sampled decoding needs at least one seed")
    model, tok, ckpt = load_model(cfg.ckpt, pick_device(cfg.device))
    mode = ckpt["config"].get("mode", "cot")
    data_dir = cfg.data_dir or ckpt["config"]["data_dir"]
    examples = read_split(os.path.join(data_dir, f"{cfg.split}.txt"))
    examples = examples[:cfg.n] if cfg.n > 0 else examples
    c = 0 if mode == "nocot" else 1
    records = []
    for d in decodes:
        r = evaluate(model, tok, examples, cfg.method or mode, c, d, seeds, cfg.split, ckpt["path"],
                     cfg.temperature, cfg.top_p, cfg.batch_size)
        print(format_record(r))
        records.append(r)
    if cfg.out:
        merge_records(cfg.out, records)
        print(f"records merged into {cfg.out}")
    return records


if __name__ == "__main__":
    run_cli(main, parse_config(EvalConfig))

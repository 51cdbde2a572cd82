"""
The synthetic multi-step arithmetic task, written as GSM8K-Aug lines, deterministically from a seed.

A question is a start number and a row of operations applied left to right; every step of the chain applies one of them:

    0-5-4+7+6-7*9*3||<<0-5=5>> <<5-4=1>> <<1+7=8>> <<8+6=4>> <<4-7=7>> <<7*9=3>> <<3*3=9>> #### 9

The default is clock arithmetic (every result mod 10): the chain is long (7 steps of 8 tokens), every number is one
token in any tokenizer, and the answer cannot be read off the question without working through the steps, so a model
that reasons step by step (CoT) is far ahead of one that must answer at once (No-CoT). With --mod 0 the numbers grow
freely (results kept within 0..max_value), which makes a harder, GSM-like variant. With --check_p p, a chain ends
with a redundant check step (for the line above, <<9=9>>) with probability p: the same question then has two correct
chains of different lengths, as GSM8K-Aug's questions do, which gives RL a shorter chain to find (see train_rl.py).

    python -m data.synthetic                              # the default task, into data/synth/
    python -m data.synthetic --mod 0 --operand_max 99 --steps_min 3 --steps_max 5 --out data/synth_big
    python -m data.synthetic --check_p 0.5 --out data/synth_check
"""
import json
import os
import random
import sys
from dataclasses import asdict, dataclass

from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import UserError, check_folder, parse_config, run_cli  # noqa: E402
from data.format import SPLIT_FILES, chain_text, format_line, write_split  # noqa: E402

OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


@dataclass
class SynthConfig:
    out: str = "data/synth"     # folder for train.txt, val.txt, test.txt and meta.json
    seed: int = 1234            # the whole data set follows from it
    n_train: int = 100000       # training examples
    n_val: int = 500            # validation examples (model selection)
    n_test: int = 1000          # test examples (reported figures only)
    steps_min: int = 6          # fewest operations per question
    steps_max: int = 8          # most operations per question
    ops: str = "+-*"            # operators to draw from
    start_max: int = 9          # the start number is drawn from 0..start_max
    operand_min: int = 1        # operands are drawn from operand_min..operand_max
    operand_max: int = 9
    mod: int = 10               # every result is taken mod this (0: no modulus)
    max_value: int = 999        # with mod 0: operations whose result leaves 0..max_value are redrawn
    check_p: float = 0.0        # probability that a chain ends with a redundant check step <<v=v>> (0: never)


def check(cfg):
    if not 1 <= cfg.steps_min <= cfg.steps_max:
        raise UserError(f"need 1 <= steps_min <= steps_max, got {cfg.steps_min}, {cfg.steps_max}")
    if not cfg.ops or set(cfg.ops) - set(OPS):
        raise UserError(f"ops must be a non-empty string of {''.join(OPS)}, got {cfg.ops!r}")
    if not 0 <= cfg.operand_min <= cfg.operand_max:
        raise UserError(f"need 0 <= operand_min <= operand_max, got {cfg.operand_min}, {cfg.operand_max}")
    if not 0.0 <= cfg.check_p <= 1.0:
        raise UserError(f"check_p is a probability, 0..1, got {cfg.check_p}")
    if cfg.mod < 0 or cfg.start_max < 0 or min(cfg.n_train, cfg.n_val, cfg.n_test) < 0:
        raise UserError("mod, start_max and the split sizes must not be negative")


def make_example(rng, cfg):
    """One (question, steps, answer), drawn with the random.Random `rng`."""
    value = rng.randint(0, cfg.start_max)
    question, steps = str(value), []
    for _ in range(rng.randint(cfg.steps_min, cfg.steps_max)):
        for _ in range(100):  # without a modulus, redraw operations that leave 0..max_value
            op, b = rng.choice(cfg.ops), rng.randint(cfg.operand_min, cfg.operand_max)
            new = OPS[op](value, b)
            new = new % cfg.mod if cfg.mod else new
            if cfg.mod or 0 <= new <= cfg.max_value:
                break
        else:
            raise UserError("could not draw an operation that keeps results within 0..max_value: raise max_value")
        question += f"{op}{b}"
        steps.append(f"{value}{op}{b}={new}")
        value = new
    if cfg.check_p > 0 and rng.random() < cfg.check_p:  # (no draw at check_p 0: the default data stay the same)
        steps.append(f"{value}={value}")
    return question, steps, str(value)


def generate(cfg):
    """Test, then val, then train, each question unique across all three splits."""
    check(cfg)
    rng = random.Random(cfg.seed)
    seen, splits = set(), {}
    # a progress bar on a terminal only (a few seconds for the default 101,500 examples); none in logs and tests
    bar = tqdm(total=cfg.n_test + cfg.n_val + cfg.n_train, desc="examples", unit="ex", disable=not sys.stderr.isatty())
    for name, n in (("test", cfg.n_test), ("val", cfg.n_val), ("train", cfg.n_train)):
        out, tries = [], 0
        while len(out) < n:
            tries += 1
            if tries > 20 * n + 1000:
                bar.close()
                raise UserError(f"the task has too few distinct questions for {n} {name} examples: make it larger")
            ex = make_example(rng, cfg)
            if ex[0] not in seen:
                seen.add(ex[0])
                out.append(ex)
                bar.update()
        splits[name] = out
    bar.close()
    return splits


def main(cfg):
    check_folder(cfg.out, "--out", SPLIT_FILES)
    splits = generate(cfg)
    os.makedirs(cfg.out, exist_ok=True)
    for name, examples in splits.items():
        write_split(os.path.join(cfg.out, f"{name}.txt"), examples)
    train = splits["train"]
    meta = {"config": asdict(cfg), "counts": {k: len(v) for k, v in splits.items()},
            "mean_chain_chars": sum(len(chain_text(s)) for _, s, _ in train) / max(1, len(train))}
    with open(os.path.join(cfg.out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(f"wrote {cfg.out}: " + ", ".join(f"{k} {v:,}" for k, v in meta["counts"].items())
          + f"; mean chain {meta['mean_chain_chars']:.1f} characters")
    if train:
        print("example:", format_line(*train[0]))
    return meta


if __name__ == "__main__":
    run_cli(main, parse_config(SynthConfig))

"""
How much of a CoLaR model's chain is needed: answer each question greedily, then again with <|eot|> forced 1, 2 and 3
latents before the point where the model stopped by itself, and print the accuracy of each.

    python runs/early_stop.py --ckpt out/colar --c 5 --n 300
"""
import os
import sys
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import load_model, parse_config, run_cli  # noqa: E402
from data.format import answers_match, read_split  # noqa: E402
from sample import generate_latent  # noqa: E402


@dataclass
class EarlyStopConfig:
    ckpt: str = "out/colar"   # a CoLaR checkpoint or run folder
    c: int = 5                # the speed
    split: str = "val"        # the split's first n questions
    n: int = 300
    data_dir: str = ""        # default: the one the model was trained on


def main(cfg):
    model, head, tok, ckpt = load_model(cfg.ckpt)
    examples = read_split(os.path.join(cfg.data_dir or ckpt["config"]["data_dir"], f"{cfg.split}.txt"))[:cfg.n]
    prompts = [tok.prompt(q, cfg.c) for q, _, _ in examples]
    right = lambda o, a: answers_match(tok.decode(o["answer"]).strip(), a)  # noqa: E731
    outs = generate_latent(model, head, tok, prompts, 64, 16)
    lengths = [o["n_latents"] for o in outs]
    acc = sum(right(o, a) for o, (_, _, a) in zip(outs, examples)) / len(examples)
    print(f"c={cfg.c}, {len(examples)} {cfg.split} questions: greedy {100 * acc:.1f}%, #L {sum(lengths) / len(lengths):.2f}")
    for early in (1, 2, 3):
        correct = 0
        for n in sorted(set(lengths)):  # the questions that stopped after n latents, now capped at n - early
            rows = [i for i, k in enumerate(lengths) if k == n]
            capped = generate_latent(model, head, tok, [prompts[i] for i in rows], max(n - early, 0), 16)
            correct += sum(right(o, examples[i][2]) for o, i in zip(capped, rows))
        print(f"  <|eot|> forced {early} latent(s) early: {100 * correct / len(examples):.1f}%")


if __name__ == "__main__":
    run_cli(main, parse_config(EarlyStopConfig))

"""
The main job, one stage after another; a stage whose result already exists is skipped, and an interrupted training
stage resumes from its latest checkpoint. Prints the results table and writes results/demo.json.

    python demo.py                 # ~25 minutes on 2 CPU cores
"""
import os
import time
from dataclasses import dataclass, replace

from common import load_checkpoint, parse_config, print_config, run_cli, _read_pointer
from data import synthetic
from data.format import read_split
import evaluate
import train_sft


@dataclass
class DemoConfig:
    data_dir: str = "data/synth"      # where the synthetic task is written
    out_dir: str = "out"              # run folders go under it: out/cot, out/nocot
    results: str = "results/demo.json"  # evaluation records
    max_steps: int = 1200             # training steps of each model
    seeds: str = "0,1,2,3,4"          # seeds for sampled decoding
    device: str = "auto"              # auto, cpu, cuda, mps


def train_stage(cfg, name, mode):
    """Train out/<name> unless it is finished; resume it when it was interrupted."""
    run = train_sft.TrainConfig(data_dir=cfg.data_dir, mode=mode, out_dir=os.path.join(cfg.out_dir, name),
                                max_steps=cfg.max_steps, device=cfg.device)
    if _read_pointer(run.out_dir, "latest"):
        if load_checkpoint(run.out_dir, "latest")["step"] >= run.max_steps:
            print(f"== {name}: already trained ({run.out_dir}), skipped")
            return run.out_dir
        run = replace(run, resume=True)
    print(f"== {name}: training ({mode})")
    train_sft.main(run)
    return run.out_dir


def main(cfg):
    print_config(cfg)
    t0 = time.time()
    if os.path.exists(os.path.join(cfg.data_dir, "train.txt")):
        print(f"== data: {cfg.data_dir} exists, skipped")
    else:
        print("== data: generating the synthetic task")
        synthetic.main(synthetic.SynthConfig(out=cfg.data_dir))
    times = {"data": time.time() - t0}
    runs = {}
    for name in ("cot", "nocot"):
        t = time.time()
        runs[name] = train_stage(cfg, name, name)
        times[f"train {name}"] = time.time() - t
    t = time.time()
    print("== evaluation on the test split")
    records = []
    test = read_split(os.path.join(cfg.data_dir, "test.txt"))
    for name, run_dir in runs.items():
        records += evaluate.main(evaluate.EvalConfig(ckpt=run_dir, data_dir=cfg.data_dir, split="test",
                                                     seeds=cfg.seeds, out=cfg.results, device=cfg.device))
    print(f"\nresults on {len(test):,} test questions (written to {cfg.results}):")
    for r in records:
        print(evaluate.format_record(r))
    times["evaluation"] = time.time() - t
    print("stage times: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items())
          + f"; total {(time.time() - t0) / 60:.1f} min")
    return records


if __name__ == "__main__":
    run_cli(main, parse_config(DemoConfig))

"""
The main job, one stage after another: the synthetic data, the CoT and No-CoT baselines, CoLaR SFT from the CoT model,
and the evaluation of all three on the test split (CoLaR at c = 1..5, greedy and sampled over 5 seeds). A stage whose
result already exists is skipped, and an interrupted training stage resumes from its latest checkpoint.
Prints the results table and writes results/demo.json.

    python demo.py                 # about 30 minutes on 2 CPU cores
"""
import os
import time
from dataclasses import dataclass, replace

from common import load_checkpoint, parse_config, print_config, run_cli, read_pointer
from data import synthetic
import evaluate
import train_sft


@dataclass
class DemoConfig:
    data_dir: str = "data/synth"      # where the synthetic task is written
    out_dir: str = "out"              # run folders go under it: out/cot, out/nocot, out/colar
    results: str = "results/demo.json"  # evaluation records
    max_steps: int = 1200             # training steps of the CoT and No-CoT models
    colar_steps: int = 6000           # CoLaR SFT steps (from the CoT model)
    colar_lr: float = 1e-3            # CoLaR SFT peak learning rate
    seeds: str = "0,1,2,3,4"          # seeds for sampled decoding
    device: str = "auto"              # auto, cpu, cuda, mps


def train_stage(run, name):
    """Train run.out_dir unless it is finished; resume it when it was interrupted."""
    if read_pointer(run.out_dir, "latest"):
        if load_checkpoint(run.out_dir, "latest")["step"] >= run.max_steps:
            print(f"== {name}: already trained ({run.out_dir}), skipped")
            return run.out_dir
        run = replace(run, resume=True)
    print(f"== {name}: training ({run.mode})")
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
    base = train_sft.TrainConfig(data_dir=cfg.data_dir, max_steps=cfg.max_steps, device=cfg.device)
    plans = {"cot": replace(base, mode="cot", out_dir=os.path.join(cfg.out_dir, "cot")),
             "nocot": replace(base, mode="nocot", out_dir=os.path.join(cfg.out_dir, "nocot"))}
    plans["colar"] = replace(base, mode="colar", out_dir=os.path.join(cfg.out_dir, "colar"),
                             init_from=plans["cot"].out_dir, max_steps=cfg.colar_steps, lr=cfg.colar_lr, eval_n=200,
                             eval_every=1000)
    runs = {}
    for name, run in plans.items():
        t = time.time()
        runs[name] = train_stage(run, name)
        times[f"train {name}"] = time.time() - t
    t = time.time()
    print("== evaluation on the test split")
    records = []
    for name, run_dir in runs.items():
        records += evaluate.main(evaluate.EvalConfig(ckpt=run_dir, data_dir=cfg.data_dir, split="test",
                                                     seeds=cfg.seeds, out=cfg.results, device=cfg.device,
                                                     text_cot=(name == "colar")))
    print(f"\nresults on {records[0]['n']:,} test questions (written to {cfg.results}):")
    for r in records:
        print(evaluate.format_record(r))
    times["evaluation"] = time.time() - t
    print("stage times: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items())
          + f"; total {(time.time() - t0) / 60:.1f} min")
    return records


if __name__ == "__main__":
    run_cli(main, parse_config(DemoConfig))

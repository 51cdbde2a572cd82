"""
The main job, one stage after another: the synthetic data, the CoT and No-CoT baselines, CoLaR SFT from the CoT model,
RL of the CoLaR model at one speed, and the evaluation of everything on the test split (CoLaR at c = 1..5, greedy and
sampled over 5 seeds). Prints the results table and writes it (out/results/demo.json records, out/results/demo.md)
with the accuracy-versus-#L plot (out/results/demo.png, when matplotlib is installed), each beside the committed
reference run's (results/demo.json): a column of the table, grey points of the plot. So a run leaves the committed
results/ as they are (--results names another file).

Each stage is one command of this repository, printed before it runs (so the demo doubles as its own recipe). A
stage whose result exists is skipped: the data when every split is there, a finished training run (one made with
other settings is refused, never reported as this run's), an evaluation already in the results file for the same
checkpoint. An interrupted training stage resumes from its latest checkpoint. So an interrupted demo picks up where
it stopped when run again with the same flags. Records in the results file that this run did not make (a stage it
leaves out, a run folder moved away) are kept, so they stay in the table; the demo names them.

    python demo.py                      # the whole pipeline, about 36 minutes on 2 CPU cores
    python demo.py --quick true         # the same pipeline, smaller, in about 6 minutes (out/quick, out/quick/results)
    python demo.py --ablations true     # then the ablations (DL, MP, NLL, OC at c = 2, 5) and the unseen-speed model
    python demo.py --baselines true     # then the latent baselines: Coconut, pause as thought, iCoT, Distill (CODI)
    python demo.py --task gsm8k         # the same on GSM8K ($COLAR_DATA or downloaded), from scratch, GPT-2's BPE
    python demo.py --task mult4         # the benchmark: iCoT's 4x4 multiplication, public test file: about 8 hours
    python demo.py --task mult5         # 5x5: about 13 hours (both estimated from their stages' times)
    python demo.py --task mult4 --colar_stages none --rl_c 2   # 4x4 without the ladder: about an hour

With --colar_stages (the multiplication tasks' default) a stage "c:steps" trains at speed c alone from the best
checkpoint of the stage before (into out_dir/colar_c{c}_{steps}), beside the CoLaR model trained at every speed at
once; each speed's last stage is evaluated at its speed (colar_ladder), RL starts from --rl_c's.
"""
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from itertools import takewhile

from checkpoint import file_sha256, load_checkpoint, read_pointer, resolve_checkpoint
from common import (UserError, check_flags, check_folder, given_fields, parse_config, pick_device, print_config,
                    read_json, read_records, run_cli)
from data.format import SPLIT_FILES
from data.multiplication import FORMATS, MultConfig, default_out
from data.synthetic import SynthConfig, check as check_synth
from tokenizer import KINDS


@dataclass
class DemoConfig:
    task: str = "synth"               # synth (the synthetic task), gsm8k, mult4 or mult5 (each sets its values below)
    data_dir: str = "data/synth"      # where the task's train/val/test files are written
    gsm8k_source: str = ""            # gsm8k: data.gsm8k's --source (empty: $COLAR_DATA, else downloaded)
    mult_test_file: str = ""          # mult4/5: iCoT's test_bigbench.txt (empty: in $COLAR_DATA, else downloaded)
    mult_format: str = MultConfig.format  # mult4/5: the chain's steps (data/multiplication.py --format)
    steps_min: int = 6                # synth: fewest operations per question (data/synthetic.py)
    steps_max: int = 8                # synth: most operations per question
    out_dir: str = "out"              # run folders go under it: out/cot, out/nocot, out/colar, out/colar_rl, ...
    results: str = ""                 # evaluation records (table, plot beside them); empty: out_dir/results/<task>.json
    reference: str = "results/demo.json"  # a reference run's committed records, shown beside this run's if present
    quick: bool = False               # the ~6-minute version: sets the QUICK values below
    ablations: bool = False           # also train and evaluate the ablations and the unseen-speed model
    baselines: bool = False           # also train and evaluate the latent baselines (baselines.py), from the CoT model
    baseline_steps: int = 3000        # training steps of each baseline
    tokenizer: str = "char"           # char, number, place or gpt2 (train_sft.py --tokenizer)
    batch_size: int = 64              # sequences per training step (SFT)
    n_layer: int = 4                  # model size of CoT and No-CoT (trained from scratch; the rest start from CoT)
    n_head: int = 4                   # attention heads (they divide n_embd)
    n_embd: int = 128                 # model width
    max_steps: int = 1200             # training steps of the CoT and No-CoT models (the learning-rate schedule's)
    stop_at: int = 0                  # CoT and No-CoT stop at this step of that schedule (0: run it to the end)
    colar_steps: int = 6000           # CoLaR SFT steps (from the CoT model), also each ablation's without a ladder
    colar_lr: float = 1e-3            # CoLaR SFT peak learning rate
    colar_stages: str = ""            # also a CoLaR model per speed: "c:steps ...", each from the one before; none: not
    rl_c: int = 5                     # the speed RL trains at
    rl_steps: int = 600               # RL steps
    rl_lr: float = 2e-5               # RL learning rate (train_rl.py --lr)
    rl_sigma_min: float = 0.1         # the latent head's sigma floor in RL (train_rl.py --sigma_min)
    rl_length_penalty: float = 0.0    # train_rl.py --length_penalty
    rl_eval_n: int = 500              # validation questions for RL's checkpoint selection
    n_test: int = 0                   # test questions to evaluate (0: all)
    max_latents: int = 64             # cap on latents per answer: validation, RL rollouts and evaluation
    seeds: str = "0,1,2,3,4"          # seeds for sampled decoding
    train_seed: int = 1337            # seeds every training stage (weights, data order, draws): one per trained model
    device: str = "auto"              # auto, cpu, cuda, mps


# --quick: to see the pipeline's shape in minutes, at lower accuracy: chains of 3-4 steps instead of 6-8 (half as
# long, so each step costs half), the fewest steps that teach CoT this task (it jumps from 28% to 100% between steps
# 300 and 500), a short CoLaR stage, 200 test questions and 3 seeds; into out_dir/quick, beside results/demo_quick.json
QUICK = dict(data_dir="data/synth_quick", steps_min=3, steps_max=4, max_steps=600, colar_steps=800, rl_steps=20,
             rl_eval_n=100, n_test=200, seeds="0,1,2", reference="results/demo_quick.json")

# --task gsm8k: GSM8K's 7k training problems with a from-scratch model and GPT-2's BPE reduced to the data's ids;
# the steps fit a CPU (the 13.6k-way softmax makes training about 6x slower per token than on the synthetic task)
GSM8K = dict(data_dir="data/gsm8k", out_dir="out/gsm8k", reference="results/gsm8k_demo.json", tokenizer="gpt2",
             batch_size=32, max_steps=400, colar_steps=800, rl_steps=60, rl_eval_n=200)

# --task mult4 / mult5: iCoT's multiplication (data/multiplication.py), digits least-significant first, a chain of
# the partial products and running sums written place by place (--mult_format interleaved), "place" tokens (a digit's
# token tells its place) (CoT from scratch: 4,000 steps of an 8,000-step schedule reach 95-99.8% on validation over
# three seeds; the "product" chain 94.6-98.2%).
# Trained at every speed at once (the paper's recipe, the colar stage) CoLaR answers 0-1% above c = 1 here; one speed
# at a time, each stage from the best model of the one before, it writes every digit at c = 2..5 (EXPERIMENTS.md, the
# ladder: 98.0 / 98.6 / 90.6 / 90.9% on test for one training seed, c = 4 from c = 3's first stage; this order, c = 4
# after c = 3's second, is not yet measured end to end). A speed's second stage restarts the learning-rate
# schedule: a stage can end while still rising and climb again on a fresh one. RL at c = 5, the fastest speed and
# (with c = 4) the one the ladder leaves the most room at, with the learning rate and sigma floor that gained at c = 2
# and 3 (at 2e-5 and 0.1 it drifted down at c = 2)
LADDER = "2:14000 3:6000 3:10000 4:6000 4:10000 5:10000 5:8000"
MULT = dict(tokenizer="place", max_steps=8000, stop_at=4000, colar_steps=6000, max_latents=96, colar_stages=LADDER,
            rl_c=5, rl_steps=400, rl_lr=5e-6, rl_sigma_min=0.03, rl_eval_n=200)
TASKS = {"gsm8k": GSM8K, **{f"mult{n}": MULT for n in (4, 5)}}


def mult_name(task, fmt):
    """A multiplication task's name for its folders and records: mult4 for the default chain, mult4_{format} for
    another (data/multiplication.py's --out)."""
    return os.path.basename(default_out(int(task[4:]), fmt))


# the ablations of the paper's Table 1 (each one switch of the CoLaR recipe), evaluated at c = 2 and 5 (with
# --colar_stages: the ladder's first and last speed's stages with the switch, each from the plain model before them),
# and the generalisation test of its Figure 5: train on c in {1, 3, 5}, evaluate at every c (2 and 4 never seen)
ABLATIONS = {"colar_dl": dict(deterministic=True), "colar_mp": dict(pool="mean"),
             "colar_nll": dict(latent_loss="nll"), "colar_oc": dict(chunk_labels=False)}
UNSEEN = {"colar_135": dict(c_values="1,3,5")}

# the latent baselines of the paper's Table 1 and the pause control, each from the CoT model (baselines.py has them)
BASELINES = ("coconut", "pause", "icot", "distill")


HERE = os.path.dirname(os.path.abspath(__file__))


def run(args):
    """Run one of this repository's commands (`python <args>`), printed first; a failure stops the demo."""
    print("$ python " + " ".join(args), flush=True)
    script = [os.path.join(HERE, args[0])] if args[0].endswith(".py") else args[:1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [HERE, os.environ.get("PYTHONPATH")]))}
    rc = subprocess.run([sys.executable] + script + args[1:], env=env).returncode
    if rc:
        raise UserError(f"the command above failed (exit status {rc}); run the demo again to resume where it stopped")


def flags(d):
    return [f"--{k}={v}" for k, v in d.items()]


def existing_run(name, run_flags):
    """Whether the stage's folder holds a run (None: none yet) and that run is finished (at max_steps, or at stop_at
    where that is set); a run there must be the one the stage would train, from its start's model as it is now."""
    out_dir, last = run_flags["out_dir"], run_flags["max_steps"]
    if run_flags.get("stop_at", 0) > 0:
        last = min(last, run_flags["stop_at"])
    if not read_pointer(out_dir, "latest"):
        return None
    ckpt = load_checkpoint(out_dir, "latest", mmap=True)
    finished = ckpt["step"] >= last
    check_same_run(name, ckpt, run_flags, finished)
    check_same_start(ckpt, run_flags)
    return finished


def check_plan(stages):
    """Before any stage trains: every run already there must be the one its stage would train, and none may have
    been trained from a stage that this demo will train (further): that run would be reported beside a model it was
    not trained from. One line naming every such run."""
    training, stale = set(), []
    for name, _, run_flags in stages:  # (each stage's start comes before it in the list)
        finished = existing_run(name, run_flags)
        init = run_flags.get("init_from")
        if finished is not None and init and os.path.realpath(init) in training:
            stale.append(run_flags["out_dir"])
        if not finished:
            training.add(os.path.realpath(run_flags["out_dir"]))
    if stale:
        raise UserError(f"{', '.join(stale)} were trained from runs this demo trains (further) now: move them aside "
                        f"to train them again from the new models, or give another --out_dir")


def train_stage(name, script, run_flags):
    """Train run_flags["out_dir"] with script (train_sft.py or train_rl.py) unless it is finished; resume it when
    interrupted or when asked to go further."""
    finished = existing_run(name, run_flags)
    if finished:
        print(f"== {name}: already trained ({run_flags['out_dir']}), skipped")
        return
    if finished is not None:
        run_flags = {**run_flags, "resume": "true"}
    print(f"== {name}: training ({run_flags['out_dir']})")
    run([script] + flags(run_flags))


def check_same_run(name, ckpt, run_flags, finished):
    """The run a stage finds in its folder must be the one it would train: a run made with other settings (another
    seed, model size, data...) would otherwise be reported under this demo's settings. A finished run must match
    every flag but the device; one to resume may differ in how far it goes (max_steps, stop_at, and eval_every,
    which the demo derives from the steps)."""
    saved = ckpt.get("rl_config") or ckpt["config"]
    loose = {"out_dir", "device"} | (set() if finished else {"max_steps", "stop_at", "eval_every"})
    def same(k, v):
        if k in ("data_dir", "init_from"):  # folders: the same one however named
            return os.path.realpath(saved[k]) == os.path.realpath(v)
        return saved[k] == v
    diff = [f"{k}={saved.get(k)!r} (now {v!r})" for k, v in run_flags.items()
            if k not in loose and not (k in saved and same(k, v))]
    if diff:
        raise UserError(f"{run_flags['out_dir']} holds a {name} run trained with other settings: {', '.join(diff)}; "
                        f"run the demo with those, or give another --out_dir")


def check_same_start(ckpt, run_flags):
    """A run trained from another stage's model must have started from that stage's best checkpoint as it is now: a
    stage trained further (a larger --stop_at, more steps) leaves the runs built on its old model stale, and the
    table would put them beside the new one. (Runs saved without the record of their start are taken as they are.)"""
    start, init = ckpt.get("started_from"), run_flags.get("init_from")
    if not start or not init or not read_pointer(init, "latest"):
        return
    now = resolve_checkpoint(init, "best")
    if file_sha256(now) != start["sha256"]:
        raise UserError(f"{run_flags['out_dir']} was trained from {start['path']} (step {start['step']}), but "
                        f"{init}'s model has changed since (its best is now {os.path.basename(now)}): move "
                        f"{run_flags['out_dir']} and the stages trained from it aside to train them again from it, "
                        f"or give another --out_dir")


def eval_stage(cfg, name, run_dir, cs=None, text_cot=False):
    """Evaluate run_dir's best checkpoint on the test split under the method name `name`; evaluate.py --skip_done
    leaves out each record the results file already holds for this very checkpoint (its bytes' hash, not its name:
    another run's records are never taken for this one's), questions, seeds and decoding settings."""
    print(f"== evaluation of {name} ({run_dir})")
    run(["evaluate.py"] + flags(dict(ckpt=run_dir, data_dir=cfg.data_dir, split="test", n=cfg.n_test, method=name,
                                     seeds=cfg.seeds, out=cfg.results, skip_done=True, device=cfg.device,
                                     text_cot=text_cot, max_latents=cfg.max_latents))
        + ([f"--c={','.join(map(str, cs))}"] if cs else []))


def parse_seeds(text):
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) < len(seeds):
        raise UserError(f"--seeds must be comma-separated integers, at least one and each once, got {text!r}")
    return seeds


def parse_stages(text):
    """--colar_stages as [(c, steps), ...] in order: each word speed:steps, a speed of 1..5 (the evaluated ones), no
    stage twice (both would train the same folder); [] for an empty text or "none"."""
    stages = []
    if text.strip() == "none":
        return stages
    for word in text.split():
        m = re.fullmatch(r"([1-5]):([1-9][0-9]*)", word)
        if not m:
            raise UserError(f"--colar_stages holds {word!r}, not speed:steps with a speed of 1..5 (e.g. 4:6000)")
        if (int(m[1]), int(m[2])) in stages:
            raise UserError(f"--colar_stages holds {word!r} twice; a stage is named by its speed and steps")
        stages.append((int(m[1]), int(m[2])))
    return stages


def ladder_stages(colar, speeds, start, out, prefix):
    """The training stages of one-speed stages [(c, steps), ...] from the run folder `start`: each at its speed alone,
    from the best checkpoint of the stage before, into out(f"{prefix}_c{c}_{steps}"), with the flags of `colar`."""
    stages = []
    for c, n in speeds:
        name = f"{prefix}_c{c}_{n}"
        stages.append((name, "train_sft.py", {**colar, "out_dir": out(name), "init_from": start, "c_values": str(c),
                                              "max_steps": n, "eval_every": max(1, n // 10)}))
        start = out(name)
    return stages


def speed_ends(speeds, start, folders):
    """{c: (the folder its stages start from, [its stages])} for the ladder's first speed (its leading stages, from
    `start`) and its last (its trailing stages, from the folder of the stage before them; only these when the ladder
    ends at the speed it starts at); folders: each stage's."""
    first, last = speeds[0][0], speeds[-1][0]
    lead = len(list(takewhile(lambda s: s[0] == first, speeds)))
    tail = len(speeds) - len(list(takewhile(lambda s: s[0] == last, reversed(speeds))))  # the last speed's first
    return {first: (start, speeds[:lead]), last: (folders[tail - 1] if tail else start, speeds[tail:])}


def data_done(data_dir):
    """Whether the data stage has run: every split is there (each is written whole or not at all)."""
    return all(os.path.isfile(os.path.join(data_dir, name)) for name in SPLIT_FILES)


def as_flags(made):
    """A data generator's settings as the demo's flags: {"format": "product"} -> "--mult_format product"."""
    return " ".join(f"--{'mult_format' if k == 'format' else k} {v}" for k, v in made.items())


def data_settings(cfg):
    """The settings that define the task of the data the data stage would make (the generator's, but for where it
    writes, its seed and its sizes), so that another task's data (another size of multiplication, chain, range of
    operations) is never trained on under this task's name."""
    if cfg.task.startswith("mult"):
        made = asdict(MultConfig(digits=int(cfg.task[4:]), format=cfg.mult_format))
    elif cfg.task == "synth":
        made = asdict(SynthConfig(steps_min=cfg.steps_min, steps_max=cfg.steps_max))
    else:
        return {}
    return {k: v for k, v in made.items() if k not in ("out", "test_file", "seed", "n_train", "n_val", "n_test")}


def check_inputs(cfg):
    """Everything the stages will need that can be checked now, so that a bad value stops the demo before its first
    stage rather than after half an hour of training: the seeds, the numbers, the device, the results file, the
    data source and the folders. Returns the ladder's stages, [(c, steps), ...]."""
    parse_seeds(cfg.seeds)
    ladder = parse_stages(cfg.colar_stages)
    if ladder and cfg.rl_c not in {c for c, _ in ladder}:
        raise UserError(f"--rl_c {cfg.rl_c} is not a speed of --colar_stages ({cfg.colar_stages}): RL starts from "
                        f"that speed's model")
    check_flags(cfg, dict(tokenizer=KINDS),
                nonnegative=("n_test", "rl_eval_n", "rl_length_penalty", "rl_sigma_min", "stop_at"),
                positive=("batch_size", "n_layer", "n_head", "n_embd", "max_steps", "colar_steps", "rl_steps",
                          "max_latents", "colar_lr", "baseline_steps", "rl_lr"))
    if cfg.n_embd % cfg.n_head:
        raise UserError(f"--n_embd ({cfg.n_embd}) must be a multiple of --n_head ({cfg.n_head})")
    if cfg.rl_length_penalty > 1:
        raise UserError(f"--rl_length_penalty must be at most 1, got {cfg.rl_length_penalty}")
    if cfg.task == "synth":  # the data stage's own checks, before it runs
        check_synth(SynthConfig(steps_min=cfg.steps_min, steps_max=cfg.steps_max))
    pick_device(cfg.device)
    read_records(cfg.results, "--results")
    check_folder(cfg.data_dir, "--data_dir")
    check_folder(cfg.out_dir, "--out_dir")
    if data_done(cfg.data_dir):  # no data stage then: the data there must be what it would have made
        meta = os.path.join(cfg.data_dir, "meta.json")
        wanted = data_settings(cfg)
        if wanted and os.path.isfile(meta):
            made = read_json(meta, "--data_dir")
            made = made.get("config") if isinstance(made, dict) else None  # the generator's settings
            made = made if isinstance(made, dict) else {}
            diff = [k for k, v in wanted.items() if made.get(k, v) != v]  # (a setting it lacks: made at the default)
            if diff:
                other, hint = {k: made[k] for k in diff}, {"format", "steps_min", "steps_max"}.issuperset(diff)
                raise UserError(f"--data_dir {cfg.data_dir} holds data made with {as_flags(other)}, not "
                                f"{as_flags({k: wanted[k] for k in diff})}; give another --data_dir"
                                + (f" (or {as_flags(other)})" if hint else ""))
    elif cfg.task == "gsm8k" and cfg.gsm8k_source and not os.path.isdir(cfg.gsm8k_source):
        raise UserError(f"--gsm8k_source {cfg.gsm8k_source} is not a folder (it should hold gsm8k/ and gsm8k_aug/)")
    elif cfg.task.startswith("mult") and cfg.mult_test_file and not os.path.isfile(cfg.mult_test_file):
        raise UserError(f"--mult_test_file {cfg.mult_test_file} is not a file (iCoT's test_bigbench.txt)")
    return ladder


def resolve(cfg, given=None):
    """The config the demo runs: --task gsm8k's values, or --quick's (into out_dir/quick, a --results *_quick.json),
    each where the command line did not set the field (given: the fields it set; None: those that differ from the
    defaults, for a config built in code); the records go to out_dir/results/ (demo.json, demo_quick.json,
    gsm8k_demo.json, mult4.json: the reference's name) unless --results names a file."""
    check_flags(cfg, dict(task=("synth",) + tuple(TASKS), mult_format=FORMATS))
    if cfg.quick and cfg.task != "synth":
        raise UserError(f"--quick is a version of the synthetic task's demo; --task {cfg.task} has no quick version")
    if not 1 <= cfg.rl_c <= 5:
        raise UserError(f"--rl_c must be one of the trained speeds 1..5, got {cfg.rl_c}")
    if given is None:
        given = {k for k in asdict(cfg) if getattr(cfg, k) != getattr(DemoConfig, k)}
    unset = lambda preset: {k: v for k, v in preset.items() if k not in given}  # noqa: E731
    name = mult_name(cfg.task, cfg.mult_format) if cfg.task.startswith("mult") else ""  # its folders and records
    if cfg.task in TASKS:  # a preset sets only what the command line did not set
        folders = dict(data_dir=f"data/{name}", out_dir=f"out/{name}", reference=f"results/{name}.json") if name else {}
        cfg = replace(cfg, **unset({**TASKS[cfg.task], **folders}))
    if cfg.quick:
        cfg = replace(cfg, **unset(QUICK), out_dir=os.path.join(cfg.out_dir, "quick"),
                      results=cfg.results and os.path.splitext(cfg.results)[0] + "_quick.json")
    if not cfg.results:
        name = {"synth": "demo_quick" if cfg.quick else "demo", "gsm8k": "gsm8k_demo"}.get(cfg.task, name)
        cfg = replace(cfg, results=os.path.join(cfg.out_dir, "results", name + ".json"))
    return cfg


def split_records(results, run_dirs):
    """The records in the results file that measure one of run_dirs' checkpoints (each folder's best, as evaluated),
    and the others: a stage this run left out, or a run folder moved away or trained again since. The others stay
    in the file, and so in the table; the demo names them."""
    names = {d: read_pointer(d, "best") or read_pointer(d, "latest") for d in run_dirs}
    current = {file_sha256(os.path.join(d, n)) for d, n in names.items() if n and os.path.isfile(os.path.join(d, n))}
    records = read_records(results, "--results")
    return ([r for r in records if r.get("checkpoint_sha256") in current],
            [r for r in records if r.get("checkpoint_sha256") not in current])


def other_records(others):
    """The (method, c) of each of split_records' other records."""
    return sorted({(r["method"], r["c"]) for r in others})


def run_times(stages, records):
    """The run's time over every command that worked on it (an interrupted demo may be resumed many times): each
    training stage's minutes as its latest checkpoint records them (? where it records none), the evaluation's as
    this run's `records` do (split_records' first list)."""
    parts, total = [], 0.0
    for name, _, run_flags in stages:
        found = read_pointer(run_flags["out_dir"], "latest")
        seconds = load_checkpoint(run_flags["out_dir"], "latest", mmap=True).get("seconds") if found else None
        parts.append(f"{name} {'?' if seconds is None else f'{seconds / 60:.1f}'}")
        total += seconds or 0.0
    evaluation = sum(r.get("seconds", 0.0) for r in records)
    return (f"the run's time over every resume (training from its checkpoints, evaluation from its records): "
            f"{', '.join(parts)} min of training, {evaluation / 60:.1f} min of evaluation; "
            f"{(total + evaluation) / 60:.1f} min in all")


def reference_flags(cfg):
    """report.py's --reference: the reference run's records, when the file exists and is not this run's own."""
    ref = cfg.reference
    if not ref or not os.path.isfile(ref) or (os.path.exists(cfg.results) and os.path.samefile(ref, cfg.results)):
        return []
    return [f"--reference={ref}"]


def main(cfg, given=None):
    cfg = resolve(cfg, given)
    speeds = check_inputs(cfg)
    print_config(cfg)
    t0 = time.time()
    if data_done(cfg.data_dir):
        print(f"== data: {cfg.data_dir} exists, skipped")
    elif cfg.task == "gsm8k":
        print("== data: GSM8K")
        source = [f"--source={cfg.gsm8k_source}"] if cfg.gsm8k_source else []
        run(["-m", "data.gsm8k", f"--out={cfg.data_dir}"] + source)
    elif cfg.task.startswith("mult"):
        print(f"== data: iCoT's {cfg.task[4:]}x{cfg.task[4:]} multiplication")
        test_file = [f"--test_file={cfg.mult_test_file}"] if cfg.mult_test_file else []
        run(["-m", "data.multiplication", f"--digits={cfg.task[4:]}", f"--format={cfg.mult_format}",
             f"--out={cfg.data_dir}"] + test_file)
    else:
        print("== data: generating the synthetic task")
        run(["-m", "data.synthetic", f"--out={cfg.data_dir}", f"--steps_min={cfg.steps_min}",
             f"--steps_max={cfg.steps_max}"])
    times = {"data": time.time() - t0}
    out = lambda name: os.path.join(cfg.out_dir, name)  # noqa: E731
    base = dict(data_dir=cfg.data_dir, tokenizer=cfg.tokenizer, batch_size=cfg.batch_size, max_steps=cfg.max_steps,
                max_latents=cfg.max_latents, device=cfg.device, seed=cfg.train_seed)
    colar = {**base, "mode": "colar", "out_dir": out("colar"), "init_from": out("cot"), "max_steps": cfg.colar_steps,
             "lr": cfg.colar_lr, "eval_n": 200, "eval_every": max(1, cfg.colar_steps // 6)}
    scratch = {**base, "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_embd": cfg.n_embd}  # trained from scratch
    if cfg.stop_at:
        scratch["stop_at"] = cfg.stop_at
    ladder = ladder_stages(colar, speeds, out("cot"), out, "colar")
    one_speed = {c: run_flags["out_dir"] for (c, _), (_, _, run_flags) in zip(speeds, ladder)}  # c: its last stage
    stages = [("cot", "train_sft.py", {**scratch, "mode": "cot", "out_dir": out("cot")}),
              ("nocot", "train_sft.py", {**scratch, "mode": "nocot", "out_dir": out("nocot")}),
              ("colar", "train_sft.py", colar), *ladder,
              ("colar_rl", "train_rl.py", dict(init_from=one_speed.get(cfg.rl_c, out("colar")), data_dir=cfg.data_dir,
                                                c=cfg.rl_c, max_steps=cfg.rl_steps, lr=cfg.rl_lr,
                                                sigma_min=cfg.rl_sigma_min, out_dir=out("colar_rl"),
                                                eval_every=max(1, cfg.rl_steps // 6), eval_n=cfg.rl_eval_n,
                                                length_penalty=cfg.rl_length_penalty, max_latents=cfg.max_latents,
                                                device=cfg.device, seed=cfg.train_seed))]
    evals = [("cot", out("cot"), None), ("nocot", out("nocot"), None), ("colar", out("colar"), None)]
    evals += [("colar_ladder", run_dir, [c]) for c, run_dir in sorted(one_speed.items())]
    evals.append(("colar_rl", out("colar_rl"), [cfg.rl_c] if one_speed else [1, 2, 3, 4, 5]))
    if cfg.ablations:
        for name, switch in {**ABLATIONS, **UNSEEN}.items():
            if name in UNSEEN or not speeds:
                stages.append((name, "train_sft.py", {**colar, "out_dir": out(name), **switch}))
                evals.append((name, out(name), [2, 5] if name in ABLATIONS else [1, 2, 3, 4, 5]))
                continue
            for c, (start, group) in speed_ends(speeds, out("cot"), [r["out_dir"] for _, _, r in ladder]).items():
                runs = ladder_stages({**colar, **switch}, group, start, out, name)
                stages += runs
                evals.append((name, runs[-1][2]["out_dir"], [c]))
    if cfg.baselines:
        for name in BASELINES:
            stages.append((name, "train_sft.py", {**base, "mode": name, "out_dir": out(name), "init_from": out("cot"),
                                                  "max_steps": cfg.baseline_steps, "lr": cfg.colar_lr, "eval_n": 200,
                                                  "eval_every": max(1, cfg.baseline_steps // 6)}))
            evals.append((name, out(name), None))
    check_plan(stages)
    for name, script, run_flags in stages:
        t = time.time()
        train_stage(name, script, run_flags)
        times[f"train {name}"] = time.time() - t
    t = time.time()
    for name, run_dir, cs in evals:
        eval_stage(cfg, name, run_dir, cs, text_cot=(name == "colar"))
    times["evaluation"] = time.time() - t
    mine, not_mine = split_records(cfg.results, [run_dir for _, run_dir, _ in evals])  # each checkpoint hashed once
    others = other_records(not_mine)
    if others:
        print(f"note: {cfg.results} also holds records of models this run did not evaluate (a stage left out, or a "
              f"run moved away): {', '.join(f'{m} c = {c}' for m, c in others)}; the table shows them, and "
              f"another --results leaves them out")
    stem = os.path.splitext(cfg.results)[0]
    run(["report.py", f"--results={cfg.results}", f"--md={stem}.md", f"--png={stem}.png"] + reference_flags(cfg))
    print("stage times: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items())
          + f"; total {(time.time() - t0) / 60:.1f} min")
    print(run_times(stages, mine))
    with open(stem + ".md") as f:
        return f.read().rstrip("\n")


if __name__ == "__main__":
    run_cli(lambda cfg: main(cfg, given_fields(DemoConfig)), parse_config(DemoConfig))

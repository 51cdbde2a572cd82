"""
The plumbing every script shares, and nothing of the method: the --flags parser built from a config dataclass, the
one-line CLI errors, device and precision choice, several processes under torchrun, the optimizer and the data order,
and the writability of output files. Run folders and checkpoints are checkpoint.py's. Imports nothing from the
project.
"""
import argparse
import contextlib
import dataclasses
import inspect
import json
import math
import os
import re
import shlex
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

class UserError(Exception):
    """A problem with what the user asked for (a flag, a file, a checkpoint): printed as one line, no traceback."""


def run_cli(main, cfg):
    """Run main(cfg); a UserError becomes `error: ...` on stderr and exit status 2."""
    try:
        return main(cfg)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


# --- configuration ---------------------------------------------------------------------------------------------
def _field_help(cls):
    """The `# comment` after each field in the dataclass source becomes that flag's --help text."""
    helps = {}
    try:
        for line in inspect.getsource(cls).splitlines():
            m = re.match(r"\s+(\w+)\s*:[^#]*#\s*(.*)", line)
            if m:
                helps[m.group(1)] = m.group(2)
    except (OSError, TypeError):
        pass
    return helps


def _parse_bool(s):
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


def _field_kind(f):
    """What turns a field's --flag text into its value: int, float, _parse_bool or str."""
    kind = _parse_bool if f.type in (bool, "bool") else {"int": int, "float": float}.get(str(f.type), f.type)
    return kind if kind in (int, float, _parse_bool) else str


def _config_value(name, kind, value, path):
    """A config file's value for a field, checked as its --flag would be: a JSON value of the field's type (true or
    false for a bool, a whole number that is not a bool for an int, any number for a float) or the text the flag
    takes ("false", "8", "1e-3")."""
    if kind is str:
        ok = isinstance(value, str)
    elif isinstance(value, str):
        try:
            return kind(value)
        except (ValueError, argparse.ArgumentTypeError):
            ok = False
    elif kind is _parse_bool:
        ok = isinstance(value, bool)
    else:
        ok = isinstance(value, int if kind is int else (int, float)) and not isinstance(value, bool)
    if not ok:
        want = {int: "a whole number", float: "a number", _parse_bool: "true or false", str: "a string"}[kind]
        raise UserError(f"--config {path}: {name!r} must be {want}, got {json.dumps(value)}")
    return value if kind is _parse_bool else kind(value)


def read_json(path, flag, fix=""):
    """The JSON value in the file `path` that `flag` names; one line saying why when it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise UserError(f"cannot read {flag} {path}: {e.strerror or e}") from None
    except ValueError as e:  # not JSON, or not UTF-8
        raise UserError(f"{flag} {path} is not valid JSON ({e}){fix}") from None


def _read_config(cls, path):
    """The field values of a --config JSON file, each checked against its field's type."""
    values = read_json(path, "--config")
    if not isinstance(values, dict):
        raise UserError(f"--config {path} should hold a JSON object of field values, not a {type(values).__name__}")
    kinds = {f.name: _field_kind(f) for f in dataclasses.fields(cls)}
    unknown = set(values) - set(kinds)
    if unknown:
        raise UserError(f"--config {path} has unknown fields: {', '.join(sorted(unknown))}")
    return {k: _config_value(k, kinds[k], v, path) for k, v in values.items()}


def parse_config(cls, argv=None):
    """Build `cls` (a dataclass) from --flags, one per field; `--config file.json` supplies values first, checked as
    the flags are. A bad config file is one `error:` line and exit status 2."""
    return cls(**_given_values(cls, argv))


def given_fields(cls, argv=None):
    """The fields of `cls` the command line sets (a flag or --config), whatever their values: what a preset (demo.py's
    --task) must leave alone, also a value given on purpose that equals the field's default."""
    return set(_given_values(cls, argv))


class _Parser(argparse.ArgumentParser):
    """argparse, but a flag it cannot take is one `error:` line, as every other refusal is (not its usage text)."""

    def error(self, message):
        self.exit(2, f"error: {message} (--help lists the flags)\n")


def _given_values(cls, argv):
    parser = _Parser(description=(sys.modules[cls.__module__].__doc__ or "").strip().split("\n")[0])
    parser.add_argument("--config", default=None, help="JSON file of field values (flags given here override it)")
    helps = _field_help(cls)
    for f in dataclasses.fields(cls):
        parser.add_argument(f"--{f.name}", type=_field_kind(f), default=None,
                            help=f"{helps.get(f.name, '')} (default: {f.default})")
    args = parser.parse_args(argv)
    values = {}
    if args.config:
        try:
            values = _read_config(cls, args.config)
        except UserError as e:
            parser.exit(2, f"error: {e}\n")
    values.update({k: v for k, v in vars(args).items() if k != "config" and v is not None})
    return values


def print_config(cfg):
    """The config as one line of key=value, a value holding spaces quoted (so each pair reads as one flag)."""
    show = lambda v: shlex.quote(v) if isinstance(v, str) and re.search(r"\s", v) else v  # noqa: E731
    print0(" ".join(f"{k}={show(v)}" for k, v in dataclasses.asdict(cfg).items()))


def check_flags(cfg, choices=None, positive=(), nonnegative=()):
    """One line for the first flag out of range: a value not among its choices, a number not > 0, or not >= 0, or
    infinite (an lr of inf would train to NaN before saying so)."""
    for name, options in (choices or {}).items():
        if getattr(cfg, name) not in options:
            raise UserError(f"--{name} must be one of {', '.join(map(str, options))}, got {getattr(cfg, name)!r}")
    for names, low, word in ((positive, 1e-300, "positive"), (nonnegative, 0, ">= 0")):
        for name in names:
            value = getattr(cfg, name)
            if not value >= low:  # also refuses NaN
                raise UserError(f"--{name} must be {word}, got {value}")
            if value == float("inf"):
                raise UserError(f"--{name} must be a finite number, got inf")


def nearest_existing(path):
    """The path itself, or its nearest ancestor that exists (the folders still to be made lie between)."""
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


PICTURES = ("png", "pdf", "svg", "jpg", "jpeg", "webp", "eps", "ps", "tif", "tiff")  # formats matplotlib writes


def check_picture(path, flag):
    """A picture's file, refused before any work where it could not be written, or not as a picture matplotlib
    draws (its extension says the format)."""
    check_writable(path, flag)
    if os.path.splitext(path)[1][1:].lower() not in PICTURES:
        raise UserError(f"{flag} {path}: a picture ends in one of .{', .'.join(PICTURES)}")


def check_writable(path, flag):
    """Refuse, before any work, an output file that could not be written when the work is done: a folder, a path
    through a file, a place without write permission."""
    if not os.path.basename(path):
        raise UserError(f"{flag} needs a file name, got {path!r}")
    if os.path.isdir(path):
        raise UserError(f"{flag} {path} is a folder: name a file")
    parent = nearest_existing(os.path.dirname(os.path.abspath(path)))
    if not os.path.isdir(parent):
        raise UserError(f"{flag} {path} cannot be written: {parent} is a file, not a folder")
    target = path if os.path.exists(path) else parent
    if not os.access(target, os.W_OK):
        raise UserError(f"{flag} {path} cannot be written: no permission to write {target}")


def check_folder(path, flag, files=()):
    """Refuse, before any work, an output folder that could not be made (an existing file, or a path through one),
    or one of `files` in it that could not be written (a folder of that name)."""
    parent = nearest_existing(os.path.abspath(path))
    if not os.path.isdir(parent):
        what = "is a file, not a folder" if parent == os.path.abspath(path) else f"cannot be made: {parent} is a file"
        raise UserError(f"{flag} {path} {what}")
    for name in files:
        if os.path.isdir(os.path.join(path, name)):
            raise UserError(f"{flag} {path} holds a folder named {name}, where that file is to be written")


def read_records(path, flag):
    """The evaluation records in the JSON list at `path` ([] when there is no file yet), read before any work: a file
    the records could not be merged into (not JSON, not a list of records, not writable) is refused with one line."""
    check_writable(path, flag)
    if not os.path.exists(path):
        return []
    records = read_json(path, flag, ": fix or move it, the records go into it")
    problems = [record_problem(r) for r in records] if isinstance(records, list) else ["it is not a list"]
    problem = next((p for p in problems if p), None)
    if problem:
        raise UserError(f"{flag} {path} is not a JSON list of evaluation records ({problem}): fix or move it, the "
                        f"records go into it")
    return records


RECORD_TYPES = {"method": str, "c": int, "decode": str, "split": str, "n": int, "accuracy": (int, float),
                "mean_len": (int, float), "seeds": list}


def record_problem(r, required=("method", "c", "decode", "split")):
    """What keeps `r` from being an evaluation record (a field missing, or of another type), or None."""
    if not isinstance(r, dict):
        return f"{json.dumps(r)[:40]} is not a record"
    missing = [k for k in required if k not in r]
    if missing:
        return f"a record lacks {', '.join(missing)}"
    for k, kind in RECORD_TYPES.items():
        if k in r and (not isinstance(r[k], kind) or isinstance(r[k], bool)):
            return f"a record's {k} is {json.dumps(r[k])[:40]}"
    return None


def trained_speeds(run):
    """The compression factors a run (its config dict) was trained on: its --c_values, else 1..c_max; [1] for CoT
    and [0] for No-CoT."""
    if run.get("mode") != "colar":
        return [0] if run.get("mode") == "nocot" else [1]
    values = sorted({int(v) for v in run.get("c_values", "").split(",") if v.strip()})
    return values or list(range(1, run["c_max"] + 1))


# --- devices ---------------------------------------------------------------------------------------------------
def _mps_available():
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def pick_device(name="auto"):
    """cuda, then mps, then cpu; or the device named, once this machine and this torch are known to run it."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            build = "" if torch.version.cuda else f" (torch {torch.__version__} is a build without CUDA)"
            raise UserError(f"--device {name}, but this torch sees no CUDA GPU{build}: use --device cpu or auto")
        if device.index is not None and device.index >= n:
            raise UserError(f"--device {name}, but this machine has {n} CUDA GPU(s), cuda:0 to cuda:{n - 1}")
    if device.type == "mps" and not _mps_available():
        raise UserError(f"--device {name}, but MPS is not available here (it needs a Mac with Apple silicon and a "
                        f"torch built with MPS): use --device cpu or auto")
    return device


def autocast(device):
    """The precision the model runs in on `device`, as a context manager for its forward passes: bf16 autocast on a
    CUDA GPU with native bf16 (Ampere or newer; no loss scaling needed, unlike fp16); elsewhere (CPU, MPS, older
    GPUs) nothing changes and the model runs in fp32. Parameters and optimizer state stay fp32 either way."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def full_precision(device):
    """A context in which the latent head runs in fp32 even inside the trainer's bf16 autocast: its mean and sigma
    (driven to ~1e-4 by SFT) would lose all but ~3 significant digits in bf16, and decoding runs it in fp32."""
    return torch.autocast(device.type, enabled=False)


# --- several processes (torchrun) ------------------------------------------------------------------------------
def setup_distributed(device_name="auto"):
    """Join the process group when torchrun started this process (it sets RANK, WORLD_SIZE and LOCAL_RANK): backend
    nccl with each process on cuda:LOCAL_RANK, or gloo on the CPU. Without torchrun, one process on
    pick_device(device_name). Returns (rank, world_size, local_rank, device)."""
    device = pick_device(device_name)
    if "RANK" not in os.environ:
        return 0, 1, 0, device
    rank, world_size, local_rank = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"process {local_rank} of a node wants cuda:{local_rank}, but this machine has "
                            f"{torch.cuda.device_count()} CUDA GPU(s): start at most that many processes per node")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise UserError(f"several processes run on cuda or cpu, not {device.type}")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
    return rank, world_size, local_rank, device


def is_main():
    """True in the process that prints and writes files: rank 0, or the only process."""
    return int(os.environ.get("RANK", 0)) == 0


def print0(*args, **kwargs):
    """print(), in the main process only (so several processes print one log)."""
    if is_main():
        print(*args, **kwargs)


def barrier():
    """Wait until every process gets here (nothing to wait for in a single process)."""
    if dist.is_initialized():
        dist.barrier()


def cleanup_distributed():
    """Leave the process group at the end of a run: every process waits for the others, then all destroy it (the
    order torch's own distributed tests use; a process shutting gloo down while its peer still uses the group can
    abort at exit)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_mean(values, device):
    """The mean over processes of a list of floats (the list itself in a single process)."""
    if not dist.is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / dist.get_world_size()).tolist()


class Trainee(torch.nn.Module):
    """A model and its latent head (or None) as one module whose forward is a loss function of the two: the one
    module DistributedDataParallel wraps, so that the gradients of both are averaged over the processes."""

    def __init__(self, model, head, loss_fn):
        super().__init__()
        self.model, self.head, self.loss_fn = model, head, loss_fn

    def forward(self, *args, **kwargs):
        return self.loss_fn(self.model, self.head, *args, **kwargs)


def wrap_ddp(trainee, device, world_size, find_unused=False):
    """trainee in DistributedDataParallel under torchrun, else itself."""
    if world_size == 1:
        return trainee
    return DDP(trainee, device_ids=[device.index] if device.type == "cuda" else None,
               find_unused_parameters=find_unused)


# --- optimisation ----------------------------------------------------------------------------------------------
def get_lr(step, cfg):
    """The learning rate of step `step` (0-based): a linear warm-up, lr * (step + 1) / warmup_steps, reaching lr at
    step warmup_steps - 1; then a cosine decay from lr (at warmup_steps) towards min_lr, reached at step max_steps,
    one past the last step taken."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def grad_accum_steps(total_batch_size, batch_size, world_size):
    """Micro-steps per optimizer step, so that batch_size sequences on each of world_size processes per micro-step
    add up to total_batch_size (0: one micro-step, batch_size x world_size sequences)."""
    per_pass = batch_size * world_size
    total = total_batch_size or per_pass
    if total % per_pass:
        raise UserError(f"--total_batch_size {total} is not a multiple of --batch_size {batch_size} x {world_size} "
                        f"process(es) = {per_pass}")
    return total // per_pass


def make_optimizer(modules, lr, weight_decay, betas=(0.9, 0.95)):
    """AdamW with weight decay on matrices only (not on biases and LayerNorms), over the modules' parameters."""
    params = list({id(p): p for m in modules for p in m.parameters() if p.requires_grad}.values())
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


class EpochSampler:
    """Batches of example indices: a fresh seeded permutation each epoch, the incomplete tail dropped.
    Its state (epoch, cursor) goes into checkpoints, so a resumed run sees exactly the batches it would have."""

    def __init__(self, n, batch_size, seed):
        if n < batch_size:
            raise UserError(f"the training split has {n} examples, fewer than one batch of {batch_size}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch, self.cursor = 0, 0
        self._perm_epoch, self._perm = None, None

    def next(self):
        if self.cursor + self.batch_size > self.n:
            self.epoch, self.cursor = self.epoch + 1, 0
        if self._perm_epoch != self.epoch:
            g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            self._perm, self._perm_epoch = torch.randperm(self.n, generator=g).tolist(), self.epoch
        batch = self._perm[self.cursor:self.cursor + self.batch_size]
        self.cursor += self.batch_size
        return batch

    def state_dict(self):
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, d):
        self.epoch, self.cursor = d["epoch"], d["cursor"]

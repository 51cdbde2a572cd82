"""
The plumbing every script shares, and nothing of the method: the --flags parser built from a config dataclass, the
one-line CLI errors, device and precision choice, several processes under torchrun, the optimizer and the data order,
and run folders (a new run never overwrites one; a resumed run continues exactly) with atomic, step-stamped
checkpoints and `latest` and `best` pointers. Imports nothing from the project.
"""
import argparse
import contextlib
import dataclasses
import hashlib
import inspect
import json
import os
import re
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


def parse_config(cls, argv=None):
    """Build `cls` (a dataclass) from --flags, one per field; `--config file.json` supplies values first."""
    parser = argparse.ArgumentParser(description=(sys.modules[cls.__module__].__doc__ or "").strip().split("\n")[0])
    parser.add_argument("--config", default=None, help="JSON file of field values (flags given here override it)")
    helps = _field_help(cls)
    for f in dataclasses.fields(cls):
        kind = _parse_bool if f.type in (bool, "bool") else {"int": int, "float": float}.get(str(f.type), f.type)
        if kind not in (int, float, _parse_bool):
            kind = str
        parser.add_argument(f"--{f.name}", type=kind, default=None, help=f"{helps.get(f.name, '')} (default: {f.default})")
    args = parser.parse_args(argv)
    values = {}
    if args.config:
        try:
            with open(args.config) as fh:
                values = json.load(fh)
        except (OSError, json.JSONDecodeError) as e:
            parser.error(f"cannot read --config {args.config}: {e}")
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            parser.error(f"--config {args.config} has unknown fields: {', '.join(sorted(unknown))}")
    values.update({k: v for k, v in vars(args).items() if k != "config" and v is not None})
    return cls(**values)


def print_config(cfg):
    print0(" ".join(f"{k}={v}" for k, v in dataclasses.asdict(cfg).items()))


def trained_speeds(run):
    """The compression factors a run (its config dict) was trained on: its --c_values, else 1..c_max; [1] for CoT
    and [0] for No-CoT."""
    if run.get("mode") != "colar":
        return [0] if run.get("mode") == "nocot" else [1]
    values = sorted({int(v) for v in run.get("c_values", "").split(",") if v.strip()})
    return values or list(range(1, run["c_max"] + 1))


# --- devices ---------------------------------------------------------------------------------------------------
def pick_device(name="auto"):
    """cuda, then mps, then cpu; or the device named."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None


def autocast(device):
    """The precision the model runs in on `device`, as a context manager for its forward passes: bf16 autocast on a
    CUDA GPU with native bf16 (Ampere or newer; no loss scaling needed, unlike fp16); elsewhere (CPU, MPS, older
    GPUs) nothing changes and the model runs in fp32. Parameters and optimizer state stay fp32 either way."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


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
    if dist.is_initialized():
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


# --- checkpoints -----------------------------------------------------------------------------------------------
def _atomic_write_text(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def save_checkpoint(out_dir, step, state, keep_last=3, best=False):
    """Write out_dir/ckpt_{step:06d}.pt atomically (temp file, then rename) and point `latest` (and `best`) at it.
    Older step checkpoints beyond `keep_last` are removed, never the one `best` points at."""
    os.makedirs(out_dir, exist_ok=True)
    name = f"ckpt_{step:06d}.pt"
    path = os.path.join(out_dir, name)
    try:
        with open(path + ".tmp", "wb") as f:  # opened here: torch.save's own open reports errors as RuntimeError
            torch.save(state, f)
        os.replace(path + ".tmp", path)
    except OSError as e:  # a full disk, a read-only folder: the checkpoints already written stay as they were
        raise UserError(f"cannot write checkpoint {path}: {e.strerror or e}") from None
    _atomic_write_text(os.path.join(out_dir, "latest"), name + "\n")
    if best:
        _atomic_write_text(os.path.join(out_dir, "best"), name + "\n")
    if keep_last > 0:
        keep = {name, read_pointer(out_dir, "best")}
        old = sorted(f for f in os.listdir(out_dir) if re.fullmatch(r"ckpt_\d+\.pt", f))
        for f in old[:-keep_last]:
            if f not in keep:
                os.remove(os.path.join(out_dir, f))
    return path


def read_pointer(out_dir, which):
    try:
        with open(os.path.join(out_dir, which)) as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def resolve_checkpoint(path, which="best"):
    """A checkpoint file, or a run folder (then its `best` checkpoint, else its `latest`)."""
    if os.path.isdir(path):
        for w in (which, "latest"):
            name = read_pointer(path, w)
            if name:
                return os.path.join(path, name)
        raise UserError(f"no checkpoint in {path}: it has no 'latest' pointer (did training save one?)")
    if not os.path.exists(path):
        raise UserError(f"checkpoint not found: {path}")
    return path


def file_sha256(path):
    """The SHA-256 of a file's bytes, in hex: what ties an evaluation record to the very weights it measured."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_checkpoint(path, which="best"):
    """Load a checkpoint dict (weights_only=True: plain tensors and Python values, no arbitrary code)."""
    path = resolve_checkpoint(path, which)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file fails inside torch in many ways
        raise UserError(f"checkpoint {path} is truncated or corrupt and cannot be read ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        raise UserError(f"{path} is not a checkpoint of this project (no model or model_config in it)")
    ckpt["path"] = path
    return ckpt


def open_run(out_dir, resume, script):
    """The checkpoint a run continues from, or None for a new run. A folder that holds a run is never written into
    unless resume is set, and then only by the script that made it (train_sft, train_rl)."""
    if not read_pointer(out_dir, "latest"):
        if resume:
            raise UserError(f"--resume true, but {out_dir} holds no checkpoint to resume from")
        return None
    if not resume:
        raise UserError(f"{out_dir} already holds checkpoints: pass --resume true to continue that run, "
                        f"or choose another --out_dir")
    ckpt = load_checkpoint(out_dir, which="latest")
    if ckpt.get("script") != script:
        raise UserError(f"{out_dir} holds a run of {ckpt.get('script') or 'another script'}, not of {script}: "
                        f"choose another --out_dir")
    return ckpt


def check_same(saved, cfg, keys):
    """A resumed run must keep the settings `keys` of its saved config (a dict)."""
    for key in keys:
        if saved[key] != getattr(cfg, key):
            raise UserError(f"--{key}={getattr(cfg, key)} does not match the run being resumed ({saved[key]}): "
                            f"resume with the run's own settings")


def generator_states(gen):
    """The state of `gen` in every process (a list by rank; every process must call this)."""
    if not dist.is_initialized():
        return [gen.get_state()]
    states = [None] * dist.get_world_size()
    dist.all_gather_object(states, gen.get_state().cpu())
    return states


def training_state(optimizer, sampler, gen_states):
    """What a checkpoint needs, beside the weights and configs, for a resumed run to continue exactly."""
    return {"optimizer": optimizer.state_dict(), "sampler": sampler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "train": gen_states}}


def restore_training_state(ckpt, optimizer, sampler, gen):
    """Put the optimizer, the data position and the random generators (this process's own) back as the checkpoint
    saved them. Returns (step, best_val)."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    states = ckpt["rng"]["train"]
    if len(states) != world:
        print0(f"warning: {ckpt['path']} was saved by {len(states)} process(es) and resumes in {world}: the random "
               f"draws do not continue exactly as they would have")
    if states[0].numel() != gen.get_state().numel():  # a CPU generator's state is not a CUDA one's
        raise UserError(f"{ckpt['path']} was saved on another kind of device than {gen.device}: resume it on the "
                        f"kind it was trained on (--device)")
    optimizer.load_state_dict(ckpt["optimizer"])
    sampler.load_state_dict(ckpt["sampler"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    if rank < len(states):  # (a process beyond the saved ones keeps its fresh seed)
        gen.set_state(states[rank])
    print0(f"resumed {ckpt['path']} at step {ckpt['step']}")
    return ckpt["step"], ckpt["best_val"]

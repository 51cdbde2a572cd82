"""
Run folders and checkpoints, in one place: a new run never overwrites a folder that holds one, a resumed run must be
of the same script and settings and continues exactly (optimizer, data position, every process's generator), one
live run per folder (a lock that a crashed run does not leave held), atomic step-stamped checkpoints with `latest`
and `best` pointers, nothing saved that is not finite, and a one-line error for every way a save or a load can fail.
Also the one starting point that is not a checkpoint: GPT-2's pretrained weights, shaped like one.
"""
import atexit
import contextlib
import hashlib
import os
import pickle
import re
import socket
from dataclasses import asdict, fields, replace

import torch
import torch.distributed as dist

from common import UserError, autocast, is_main, print0, read_json
from model import GPT
from tokenizer import Tokenizer

try:
    import fcntl  # the run-folder lock (Linux, macOS)
except ImportError:  # Windows: runs go unlocked
    fcntl = None


STALE = re.compile(r"(ckpt_\d+\.pt|latest|best)\.tmp")  # what a save killed half-way leaves behind


def _remove_stale(out_dir):
    """Remove the temp files of a save that was killed half-way (one run writes in a folder: see lock_run)."""
    for f in os.listdir(out_dir):
        if STALE.fullmatch(f) and os.path.isfile(os.path.join(out_dir, f)):
            os.remove(os.path.join(out_dir, f))


def kept_checkpoint(out_dir):
    """What a run that stops now leaves behind, as the end of its error line."""
    name = read_pointer(out_dir, "latest")
    return f"the last good checkpoint {os.path.join(out_dir, name)} is kept" if name else "no checkpoint was written"


def finite_model(model, head, idx, think=None):
    """Whether a model, its latent head (or None) and a baseline's thought module (or None) are fit to save: every
    weight and buffer finite, and so are the logits, the hidden states and the head's outputs of a forward pass on
    the token ids idx (B, T); finite weights can still overflow it (weights of 1e10 after one huge update give NaN
    logits). Draws nothing at random."""
    modules = [m for m in (model, head, think) if m is not None]
    states = [t for m in modules for t in m.state_dict().values() if t.is_floating_point()]
    if not all(bool(torch.isfinite(t).all()) for t in states):
        return False
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    with torch.no_grad(), autocast(idx.device):
        logits, _, h = model(idx)
        outs = [logits, h] + (list(head(h)) if head is not None else [])
    for m, mode in zip(modules, modes):
        m.train(mode)
    return all(bool(torch.isfinite(t).all()) for t in outs)


def _atomic_write(out_dir, name, write, what):
    """write(f) into out_dir/name.tmp, then rename it to name: a reader sees the old file or the whole new one, and
    after a crash of the machine too (the bytes reach the disk before the rename). A failed write (a full disk, a
    read-only folder) removes the temp file and stops the run with one line."""
    path = os.path.join(out_dir, name)
    try:
        with open(path + ".tmp", "wb") as f:  # opened here: torch.save's own open reports errors as RuntimeError
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(path + ".tmp", path)
    except (OSError, RuntimeError) as e:  # torch.save reports some failed writes as a RuntimeError of many lines
        with contextlib.suppress(OSError):
            os.remove(path + ".tmp")
        why = e.strerror if isinstance(e, OSError) and e.strerror else (str(e).strip() or type(e).__name__)
        raise UserError(f"cannot write {what}: {why.splitlines()[0]}; {kept_checkpoint(out_dir)}") from None


def save_checkpoint(out_dir, step, state, keep_last=3, best=False):
    """Write out_dir/ckpt_{step:06d}.pt atomically (temp file, then rename) and point `best` (when it is) and then
    `latest` at it: a save stopped between the two leaves `latest` on the step before, so a resumed run never holds
    a best score whose checkpoint `best` does not name. Older step checkpoints beyond `keep_last` are removed, never
    the one `best` points at, and so are the temp files of a save that was killed half-way."""
    os.makedirs(out_dir, exist_ok=True)
    _remove_stale(out_dir)
    name = f"ckpt_{step:06d}.pt"
    path = os.path.join(out_dir, name)
    _atomic_write(out_dir, name, lambda f: torch.save(state, f), f"checkpoint {path}")
    for pointer in ("best", "latest") if best else ("latest",):
        _atomic_write(out_dir, pointer, lambda f: f.write(f"{name}\n".encode()), os.path.join(out_dir, pointer))
    if keep_last > 0:
        keep = {name, read_pointer(out_dir, "best")}
        steps = {f: int(m[1]) for f in os.listdir(out_dir) if (m := re.fullmatch(r"ckpt_(\d+)\.pt", f))}
        old = sorted(steps, key=steps.get)  # by step: past step 999,999 the names no longer sort as the steps do
        for f in old[:-keep_last]:
            if f not in keep:
                os.remove(os.path.join(out_dir, f))
    return path


def read_pointer(out_dir, which):
    """The checkpoint name a run folder's pointer file (`best`, `latest`) holds, or None where there is none."""
    path = os.path.join(out_dir, which)
    try:
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        return None
    except (IsADirectoryError, UnicodeDecodeError):  # a checkpoint copied over the pointer, a folder of that name
        raise UserError(f"{path} is not a pointer (a text file naming one of the folder's checkpoints): move it "
                        f"aside") from None


def resolve_checkpoint(path, which="best"):
    """A checkpoint file, or a run folder (then its `best` checkpoint, else its `latest`)."""
    if not path:
        raise UserError("no checkpoint named (an empty path): give a checkpoint file or a run folder")
    if os.path.isdir(path):
        for w in (which, "latest"):
            name = read_pointer(path, w)
            if name and not os.path.isfile(os.path.join(path, name)):
                raise UserError(f"{os.path.join(path, w)} points at {name}, which is missing (removed by hand?): "
                                f"write the name of a checkpoint that is there into it")
            if name:
                return os.path.join(path, name)
        raise UserError(f"no checkpoint in {path}: it has no 'latest' pointer (did training save one?)")
    if not os.path.exists(path):
        raise UserError(f"checkpoint not found: {path}")
    return path


def started_from(ckpt):
    """What a run starting from the checkpoint `ckpt` records of it (its path, step and bytes' SHA-256), so that a
    pipeline can tell when the run it started from has changed since (trained further, retrained). `ckpt`: as
    load_checkpoint gives it (not mmap: with its hash)."""
    return {"path": ckpt["path"], "step": ckpt.get("step"), "sha256": ckpt["sha256"]}


def file_sha256(path):
    """The SHA-256 of a file's bytes as they are now, in hex (load_checkpoint hashes the file it loads itself)."""
    with open(path, "rb") as f:
        return _sha256(f)


def _sha256(f):
    h = hashlib.sha256()
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
    return h.hexdigest()


# how torch.load(weights_only=True) words a refused class or function (it names the class where it can)
REFUSED = re.compile(r"GLOBAL (\S+) (?:was not an allowed global|whose module)|unrecognized function|Can only create")


def _unreadable(path, e):
    """Why torch.load could not read a checkpoint, in one line."""
    refused = REFUSED.search(str(e)) if isinstance(e, pickle.UnpicklingError) else None
    if refused:
        what = f" ({refused.group(1)})" if refused.group(1) else ""
        return (f"{path} holds objects other than tensors and plain values{what}: not a checkpoint of this project, "
                f"or unsafe; refused")
    if isinstance(e, OSError):
        return f"cannot read checkpoint {path}: {e.strerror or e}"
    return f"checkpoint {path} is truncated or corrupt and cannot be read ({type(e).__name__})"


def load_checkpoint(path, which="best", mmap=False):
    """Load a checkpoint dict (weights_only=True: plain tensors and Python values, no arbitrary code), with its
    path and its bytes' SHA-256 (`sha256`: hashed from the same open file it is loaded from, so the hash is of the
    weights loaded even if the path is replaced meanwhile). mmap: the tensors stay in the file until read, for a
    caller that wants only the settings or the step (no hash)."""
    path = resolve_checkpoint(path, which)
    try:
        if mmap:
            ckpt, sha = torch.load(path, map_location="cpu", weights_only=True, mmap=True), None
        else:
            with open(path, "rb") as f:
                sha = _sha256(f)
                f.seek(0)
                ckpt = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file fails inside torch in many ways
        raise UserError(_unreadable(path, e)) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        raise UserError(f"{path} is not a checkpoint of this project (no model or model_config in it)")
    ckpt["path"], ckpt["sha256"] = path, sha
    return ckpt


_LOCKS = {}  # out_dir (its real path) -> (the open lock file by which this process holds it, whether lock_run made it)


def lock_run(out_dir):
    """Make out_dir and hold it (its file `lock`) until release_run: a second live run in it is refused with one line.
    flock, not a file of pids to check: the kernel drops the lock when its process ends, however it ends (kill -9, a
    crash), so a dead run never leaves its folder locked and no pid is guessed alive or dead; the file only tells
    the refused run who holds it (pid and host). A process that holds the folder already (an earlier run in this
    process, stopped by an error) keeps it."""
    if not out_dir or (os.path.exists(out_dir) and not os.path.isdir(out_dir)):
        raise UserError(f"{out_dir!r} is not a run folder: " + ("a file is there" if out_dir else "an empty name"))
    key = os.path.realpath(out_dir)
    if fcntl is None or key in _LOCKS:
        return
    path, created = os.path.join(out_dir, "lock"), not os.path.isdir(out_dir)
    while True:
        try:
            os.makedirs(out_dir, exist_ok=True)
            f = open(path, "a+")
        except OSError as e:  # a read-only place
            raise UserError(f"cannot write in {out_dir}: {e.strerror or e}") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().split()
            f.close()
            by = f" (pid {holder[0]} on {holder[1]})" if len(holder) == 2 else ""
            raise UserError(f"{out_dir} is in use by another run{by}: wait for it to end, or choose another "
                            f"--out_dir") from None
        except OSError as e:  # a file system without locks
            f.close()
            print0(f"warning: cannot lock {out_dir} ({e.strerror}): nothing stops a second run from writing in it")
            return
        with contextlib.suppress(FileNotFoundError):  # the file a finished run removed is no lock: open the new one
            if os.path.samestat(os.fstat(f.fileno()), os.stat(path)):
                break
        f.close()
    f.truncate(0)
    f.write(f"{os.getpid()} {socket.gethostname()}\n")
    f.flush()
    _LOCKS[key] = f, created


@atexit.register
def release_all():
    """Let go of every run folder this process holds: as it exits, however (the end of a run, an error line)."""
    for key in list(_LOCKS):
        release_run(key)


def release_run(out_dir):
    """Let go of out_dir (the end of a run, or a refused one): its lock file is removed, then unlocked; and the folder
    too when lock_run made it and nothing was written in it."""
    f, created = _LOCKS.pop(os.path.realpath(out_dir), (None, False))
    if f is not None:
        with contextlib.suppress(OSError):
            os.remove(os.path.join(out_dir, "lock"))
            if created:
                os.rmdir(out_dir)  # (only if empty)
        f.close()


def open_run(out_dir, resume, script):
    """The checkpoint a run continues from, or None for a new run. A folder that holds a run is never written into
    unless resume is set, and then only by the script that made it (train_sft, train_rl), and never by two live runs
    at once: the main process holds it (lock_run) until release_run, and first removes what a killed save left."""
    if is_main() and (os.path.isdir(out_dir) or not resume):  # (nothing to resume in a missing folder: refused below)
        lock_run(out_dir)
        if os.path.isdir(out_dir):
            _remove_stale(out_dir)
    try:
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
    except UserError:
        release_run(out_dir)
        raise


def check_same(saved, cfg, keys):
    """A resumed run must keep the settings `keys` of its saved config (a dict; a setting it lacks was saved before
    the setting existed, so the run had its default). The others may change (a lower --lr after a divergence, a
    longer --max_steps), but never unseen: they are printed, as `--flag new (the run: old)`."""
    before = {f.name: saved.get(f.name, f.default) for f in fields(cfg)}
    for key in keys:
        if before[key] != getattr(cfg, key):
            raise UserError(f"--{key}={getattr(cfg, key)} does not match the run being resumed ({before[key]}): "
                            f"resume with the run's own settings")
    changed = [f"--{k} {getattr(cfg, k)} (the run: {v})" for k, v in before.items()
               if k not in keys and k != "resume" and v != getattr(cfg, k)]
    if changed:
        print0(f"resuming with settings the run did not have: {', '.join(changed)}")


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


# --- GPT-2 as a starting point ------------------------------------------------------------------------------------
def is_pretrained(init_from):
    """Whether --init_from names GPT-2: a size, or a folder in Hugging Face's layout (config.json, as save_pretrained
    writes it; our run folders have a `latest` pointer instead)."""
    return init_from in GPT.PRETRAINED or (os.path.isdir(init_from) and not read_pointer(init_from, "latest")
                                           and os.path.isfile(os.path.join(init_from, "config.json")))


def pretrained_start(init_from, dropout=0.0):
    """GPT-2's weights (init_from names the size or the folder) as a starting point shaped like a checkpoint dict:
    the full GPT-2 vocabulary plus our special tokens, whose new embedding rows GPT.from_hf_gpt2 describes."""
    tok = Tokenizer("gpt2")
    if os.path.isdir(init_from):  # its embeddings must read the ids of GPT-2's tokenizer, the only one it can use
        hf = read_json(os.path.join(init_from, "config.json"), "--init_from")
        n = hf.get("vocab_size") if isinstance(hf, dict) and hf.get("model_type") == "gpt2" else tok.special["<|bot|>"]
        if n != tok.special["<|bot|>"]:  # (another model type is refused by GPT.from_pretrained)
            raise UserError(f"--init_from {init_from}: its vocabulary has {n} ids, GPT-2's tokenizer "
                            f"{tok.special['<|bot|>']:,}; the weights would not match the ids they read")
    try:
        model = GPT.from_pretrained(init_from, vocab_size=tok.n_vocab)
    except ImportError as e:
        raise UserError(str(e)) from None
    except ValueError as e:  # a folder not of a GPT-2 that model.py can represent
        raise UserError(f"--init_from {init_from}: {str(e).splitlines()[0]}") from None
    except OSError as e:  # no network and nothing in Hugging Face's cache; a folder without readable weights
        what = (f"{init_from}'s weights from Hugging Face (offline, and not cached?)" if init_from in GPT.PRETRAINED
                else f"GPT-2's weights from {init_from}")
        raise UserError(f"cannot load {what}: {str(e).splitlines()[0]}") from None
    m = replace(model.cfg, dropout=dropout)
    shape = {"tokenizer": "gpt2", "number_digits": 3, "n_layer": m.n_layer, "n_head": m.n_head, "n_embd": m.n_embd,
             "pos_emb": m.pos_emb}
    return {"model": model.state_dict(), "model_config": asdict(m), "config": shape, "tokenizer": tok.spec(),
            "path": f"pretrained {init_from}"}

"""Several processes (torchrun, DistributedDataParallel on CPU with gloo) and gradient accumulation: two processes keep
identical weights, match one process with the same total batch within a stated tolerance, and only process 0 writes.
Run: .venv/bin/python -m pytest tests/test_ddp.py"""
import math
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import train_sft
from checkpoint import load_checkpoint
from common import UserError
from conftest import make_tiny_data, tiny_train_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = {"cot": {}, "colar": {"c_values": "1,2,3", "self_feed": 0.5, "latent_alpha": 0.1, "max_latents": 8}}
# The tolerance on the max abs weight difference after 3 steps between runs that should agree up to float rounding.
# Measured: 7.2e-6 for 2 processes x 8 against 1 x 16, 1.2e-5 for 2 micro-steps of 8 against 1 x 16, both in one
# element of mlp.c_proj.weight (Adam's first step divides a gradient near 0 by its own size), every other weight
# within 6e-7; on data of unequal lengths (see even_data) the same runs differ by 7.7e-3 and 4.6e-3.
TOL = 5e-5


@pytest.fixture(scope="module")
def even_data(tmp_path_factory):
    """40 training examples of 3 steps each, every one the same number of tokens (one-digit numbers, mod 10): 2.5
    batches of 16, so the third step starts the second epoch. The CE is a mean over each process's (each
    micro-batch's) tokens and DDP averages those means, which is the one-process mean only when every share holds
    as many tokens (with chains of 2-4 steps the runs compared below differ by 7.7e-3)."""
    return make_tiny_data(str(tmp_path_factory.mktemp("even")), n_train=40, n_val=4, n_test=4, steps_min=3,
                          steps_max=3)


def tiny_cfg(data_dir, out_dir, mode, **kw):
    """3 steps of 16 sequences, a checkpoint at steps 2 and 3."""
    base = dict(mode=mode, max_steps=3, warmup_steps=1, eval_every=2, eval_n=2, log_every=1, **MODES[mode])
    base.update(kw)
    return tiny_train_cfg(data_dir, str(out_dir), **base)


def flags(cfg):
    return [f"--{k}={v}" for k, v in vars(cfg).items()]


def weights(ckpt):
    """Every trained tensor of a checkpoint (or of a worker's rank file), model and latent head."""
    head = ckpt.get("latent_head") or ckpt.get("head") or {}
    return {**{"model." + k: v for k, v in ckpt["model"].items()}, **{"head." + k: v for k, v in head.items()}}


def assert_close(a, b):
    """Two weight dicts agree within TOL."""
    assert a.keys() == b.keys()
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert diff < TOL, f"max abs weight difference {diff:.2e}"


def loss_lines(log):
    """(step, loss) of each progress line."""
    return [(int(s), float(v)) for s, v in re.findall(r"^step (\d+)/\d+ \| loss ([\d.]+)", log, re.M)]


def torchrun(cfg, ranks, script="ddp_worker.py"):
    """cfg's training in 2 processes; tests/ddp_worker.py saves each one's final weights, checkpoint steps and
    history under `ranks`. Returns the finished process and the two rank files."""
    os.makedirs(ranks, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "tests", script) if script == "ddp_worker.py" else os.path.join(ROOT, script)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DDP_WEIGHTS_DIR": str(ranks)}
    run = subprocess.run(cmd + flags(cfg), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    files = [os.path.join(ranks, f"rank{r}.pt") for r in (0, 1)]
    return run, [torch.load(f, weights_only=True) if os.path.exists(f) else None for f in files]


def test_bad_total_batch_size_is_a_clear_error(even_data, tmp_path):
    with pytest.raises(UserError, match="not a multiple"):
        train_sft.main(tiny_cfg(even_data, tmp_path / "a", "cot", batch_size=3, total_batch_size=8))
    with pytest.raises(UserError, match="must be >= 0"):
        train_sft.main(tiny_cfg(even_data, tmp_path / "b", "cot", total_batch_size=-8))


def test_accumulation_matches_the_whole_batch(even_data, tmp_path):
    """One process, 2 micro-steps of 8 sequences against one step of 16 (CoT: no random draws): the same weights
    within TOL (measured 1.2e-5) and the same losses."""
    whole = train_sft.main(tiny_cfg(even_data, tmp_path / "whole", "cot"))
    accum = train_sft.main(tiny_cfg(even_data, tmp_path / "accum", "cot", batch_size=8, total_batch_size=16))
    assert_close(weights(load_checkpoint(str(tmp_path / "whole"))), weights(load_checkpoint(str(tmp_path / "accum"))))
    assert whole["step"] == accum["step"] == 3
    assert [h[2] for h in accum["history"]] == pytest.approx([h[2] for h in whole["history"]], rel=1e-5)


def test_two_processes_match_one(even_data, tmp_path, capsys):
    """CoT (no random draws in the loss): 2 processes x 8 sequences against one process with batch_size 16, same
    seed. The processes end bit-identical and within TOL of the one process (measured 7.2e-6); the same losses in
    one log; only process 0 writes, and the two-process run's step-2 checkpoint resumes in one process to the same
    end."""
    one = tmp_path / "one"
    train_sft.main(tiny_cfg(even_data, one, "cot"))
    one_log = capsys.readouterr().out

    cfg = tiny_cfg(even_data, tmp_path / "ddp", "cot", batch_size=8, total_batch_size=16)
    run, (r0, r1) = torchrun(cfg, tmp_path / "ranks")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    final = load_checkpoint(cfg.out_dir, "latest")
    assert not any(k.startswith("module.") for k in final["model"])  # the unwrapped model was saved
    assert final["config"]["total_batch_size"] == 16 and final["step"] == 3
    assert_close(weights(final), weights(load_checkpoint(str(one), "latest")))
    w0, w1 = weights(r0), weights(r1)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)  # the processes ended bit-identical
    assert r0["saves"] == [2, 3] and r1["saves"] == []  # only process 0 wrote checkpoints
    assert sorted(os.listdir(cfg.out_dir)) == sorted(os.listdir(one))

    # one log, not two: the one-process run's progress lines (losses averaged over the processes)
    assert run.stdout.count("data_dir=") == 1 and run.stdout.count("done: 3 steps") == 1
    assert "batch: 16 sequences per step = 8 per pass x 2 process(es) x 1 micro-step(s)" in run.stdout
    assert len(loss_lines(run.stdout)) == 3 and run.stdout.count("eval step ") == 2
    for (s, a), (t, b) in zip(loss_lines(run.stdout), loss_lines(one_log), strict=True):
        assert s == t and a == pytest.approx(b, abs=2e-4)

    # resume the two-process run's step-2 checkpoint in one process (the same 16 sequences in one pass): same end
    resumed = tmp_path / "resumed"
    shutil.copytree(cfg.out_dir, resumed)
    with open(resumed / "latest", "w") as f:
        f.write("ckpt_000002.pt\n")
    train_sft.main(tiny_cfg(even_data, resumed, "cot", resume=True))
    assert_close(weights(load_checkpoint(str(resumed), "latest")), weights(load_checkpoint(str(one), "latest")))


def test_two_processes_colar(even_data, tmp_path):
    """CoLaR in 2 processes x 8: each process draws its own chunk labels, noise and self-feed choices, so there is
    no one-process twin; the processes still end with identical parameters and losses, every step's losses are
    finite and the first is close to the one-process run's, and only process 0 writes."""
    alone = train_sft.main(tiny_cfg(even_data, tmp_path / "one", "colar"))
    cfg = tiny_cfg(even_data, tmp_path / "ddp", "colar", batch_size=8, total_batch_size=16)
    run, (r0, r1) = torchrun(cfg, tmp_path / "ranks")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    w0, w1 = weights(r0), weights(r1)
    assert all(torch.equal(w0[k], w1[k]) for k in w0 if k != "head.scale")  # every parameter bit-identical
    # the head's scale is a buffer each process updates from its own targets in every forward pass (DDP sends
    # process 0's to the others at the start of the next), so after the last step it differs by one update
    # (measured: 4e-4 relative)
    assert w1["head.scale"].item() == pytest.approx(w0["head.scale"].item(), rel=2e-3)
    assert all(torch.equal(w0[k], v) for k, v in weights(load_checkpoint(cfg.out_dir, "latest")).items())
    assert r0["saves"] == [2, 3] and r1["saves"] == []
    assert r0["history"] == r1["history"] and len(r0["history"]) == 3  # the losses averaged over processes
    assert all(math.isfinite(ce) and math.isfinite(lat) for _, _, ce, lat in r0["history"])
    # step 1, from the same weights at the same c (the first draw of process 0's generator and of the one process's):
    # the CE differs only by the chunk labels drawn (measured: 1e-3 relative)
    (_, c, ce, _), (_, c1, ce1, _) = r0["history"][0], alone["history"][0]
    assert c == c1 and ce == pytest.approx(ce1, rel=1e-2)
    assert run.stdout.count("done: 3 steps") == 1


def test_a_failure_in_process_0_stops_every_process(even_data, tmp_path):
    """Process 0 cannot write its step-2 checkpoint (a folder stands where the file goes): it stops with a one-line
    error (it was a traceback from inside torch.save), and torchrun stops process 1, which waits at the barrier."""
    out = tmp_path / "ddp"
    (out / "ckpt_000002.pt.tmp").mkdir(parents=True)
    cfg = tiny_cfg(even_data, out, "cot", batch_size=8, total_batch_size=16)
    run, ranks = torchrun(cfg, tmp_path / "ranks", script="train_sft.py")
    assert run.returncode != 0
    assert f"error: cannot write checkpoint {out / 'ckpt_000002.pt'}: Is a directory" in run.stderr, run.stderr[-3000:]
    assert "[rank0]: Traceback" not in run.stderr
    assert not os.path.exists(out / "latest") and ranks == [None, None]

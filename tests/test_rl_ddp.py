"""train_rl.py with two processes (torchrun, DistributedDataParallel on CPU with gloo): the processes keep identical
weights, only process 0 writes checkpoints and the log, a resumed two-process run continues (and should end where the
straight one did), and a NaN in one process stops both. Run: .venv/bin/python -m pytest tests/test_rl_ddp.py"""
import os
import shutil
import subprocess
import sys

import pytest
import torch

from checkpoint import load_checkpoint, read_pointer
from test_ddp import ROOT, flags, weights
from test_rl import rl_cfg

# 3 steps of 8 questions: each process rolls out its 4 questions x 4 rollouts with its own seed and trains on its
# share in minibatches of 8 / 2 rollouts, 2 epochs (so the minibatch order matters); checkpoints at steps 0 (the
# starting model), 2 and 3
KW = dict(max_steps=3, eval_every=2, minibatch=8, epochs=2)


def torchrun(cfg, ranks, **env):
    """Run tests/rl_ddp_worker.py (train_rl.py) in 2 processes; each saves its final weights and the steps it wrote
    checkpoints at under `ranks`. Returns the finished process (stdout, stderr, returncode) and the two rank files."""
    os.makedirs(ranks, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "tests", "rl_ddp_worker.py")] + flags(cfg)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DDP_WEIGHTS_DIR": str(ranks), **env}
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    files = [os.path.join(ranks, f"rank{r}.pt") for r in (0, 1)]
    return run, [torch.load(f, weights_only=True) if os.path.exists(f) else None for f in files]


def from_step_2(src, cfg):
    """A copy of the run folder src as it was after step 2, for cfg (resume=True) to continue."""
    shutil.copytree(src, cfg.out_dir)
    os.remove(os.path.join(cfg.out_dir, "ckpt_000003.pt"))
    with open(os.path.join(cfg.out_dir, "latest"), "w") as f:
        f.write("ckpt_000002.pt\n")
    return cfg


@pytest.fixture(scope="module")
def straight(tiny_runs, tmp_path_factory):
    cfg = rl_cfg(tiny_runs, tmp_path_factory.mktemp("rl_ddp") / "straight", **KW)
    run, ranks = torchrun(cfg, tmp_path_factory.mktemp("ranks"))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    return cfg, run, ranks


@pytest.fixture(scope="module")
def resumed(tiny_runs, straight, tmp_path_factory):
    cfg = from_step_2(straight[0].out_dir, rl_cfg(tiny_runs, tmp_path_factory.mktemp("rl_ddp") / "resumed",
                                                   resume=True, **KW))
    run, ranks = torchrun(cfg, tmp_path_factory.mktemp("ranks"))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    return cfg, run, ranks


def test_two_processes_stay_equal_and_only_process_0_writes(tiny_runs, straight):
    cfg, run, (r0, r1) = straight
    final = load_checkpoint(cfg.out_dir, "latest")
    assert final["step"] == 3 and not any(k.startswith("module.") for k in final["model"])  # the unwrapped model
    start = load_checkpoint(tiny_runs["colar"])
    assert any(not torch.equal(start["model"][k], final["model"][k]) for k in final["model"])  # RL moved the weights
    w0, w1 = weights(r0), weights(r1)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)  # the processes ended bit-identical
    assert all(torch.equal(w0[k], v) for k, v in weights(final).items())  # and process 0 saved what it had
    assert r0["saves"] == [0, 2, 3] and r1["saves"] == []  # only process 0 wrote checkpoints
    assert r0["empty"] + r1["empty"] > 0  # the case covers a process that ran out of rollouts (a zero loss)
    assert sorted(os.listdir(cfg.out_dir)) == ["best", "ckpt_000000.pt", "ckpt_000002.pt", "ckpt_000003.pt", "latest"]
    assert run.stdout.count("init_from=") == 1 and run.stdout.count("done: 3 steps") == 1  # one log
    assert run.stdout.count("eval step ") == 3  # steps 0, 2, 3
    assert "over 2 process(es)" in run.stdout and "groups with signal 0.00" not in run.stdout


def test_a_resumed_two_process_run_continues(resumed):
    cfg, run, (r0, r1) = resumed
    assert "resumed " in run.stdout and "at step 2" in run.stdout and run.stdout.count("done: 3 steps") == 1
    assert load_checkpoint(cfg.out_dir, "latest")["step"] == 3
    w0, w1 = weights(r0), weights(r1)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert r0["saves"] == [3] and r1["saves"] == []


def test_a_resumed_two_process_run_ends_where_the_straight_one_did(straight, resumed):
    """Regression: checkpoints held process 0's generator only, so a resumed process 1 shuffled with its stream."""
    want, got = weights(straight[2][0]), weights(resumed[2][0])
    assert all(torch.equal(want[k], got[k]) for k in want), [k for k in want if not torch.equal(want[k], got[k])]


def test_a_nan_in_one_process_stops_both(tiny_runs, straight, tmp_path):
    """A NaN loss in process 1 only, resumed at step 2: both processes stop at step 3 with the one-line error, and
    the step-2 checkpoint stays the latest."""
    cfg = from_step_2(straight[0].out_dir, rl_cfg(tiny_runs, tmp_path / "nan", resume=True, **KW))
    run, ranks = torchrun(cfg, tmp_path / "ranks", NAN_RANK="1")
    assert run.returncode != 0 and run.stderr.count("became nan at step 3") == 2, run.stderr[-3000:]
    assert "ckpt_000002.pt is kept" in run.stderr and read_pointer(cfg.out_dir, "latest") == "ckpt_000002.pt"
    assert ranks == [None, None]  # neither process finished

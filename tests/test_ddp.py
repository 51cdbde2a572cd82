"""Several processes (torchrun, DistributedDataParallel on CPU with gloo) and gradient accumulation give the weights of
one process with the whole batch. Run: .venv/bin/python -m pytest tests/test_ddp.py"""
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import train_sft
from common import UserError, load_checkpoint
from data import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = {"cot": {}, "colar": {"c_values": "1,2,3", "self_feed": 0.5, "latent_alpha": 0.1, "max_latents": 8}}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """20 training examples: 2.5 batches of 8, so the third step starts the second epoch."""
    out = str(tmp_path_factory.mktemp("synth"))
    synthetic.main(synthetic.SynthConfig(out=out, n_train=20, n_val=4, n_test=4, steps_min=2, steps_max=4))
    return out


def tiny_cfg(data_dir, out_dir, mode, **kw):
    base = dict(data_dir=data_dir, out_dir=out_dir, mode=mode, n_layer=1, n_head=2, n_embd=32, batch_size=8,
                max_steps=3, warmup_steps=1, eval_every=2, eval_n=2, log_every=1, device="cpu", **MODES[mode])
    base.update(kw)
    return train_sft.TrainConfig(**base)


def flags(cfg):
    return [f"--{k}={v}" for k, v in vars(cfg).items()]


def weights(ckpt):
    """Every trained tensor of a checkpoint (or of a ddp_worker.py file), model and latent head."""
    head = ckpt.get("latent_head") or ckpt.get("head") or {}
    return {**{"model." + k: v for k, v in ckpt["model"].items()}, **{"head." + k: v for k, v in head.items()}}


def assert_close(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-5, msg=k)


def step_lines(log):
    """The progress and eval lines of a log, without the timings and the checkpoint path."""
    lines = [re.sub(r" \| [\d,]+ tok/s.*| \| saved .*", "", s) for s in log.splitlines()]
    return [s for s in lines if s.startswith(("step ", "eval step "))]


def test_grad_accum_steps():
    assert train_sft.grad_accum_steps(0, 64, 1) == 1      # today's single process
    assert train_sft.grad_accum_steps(0, 4, 2) == 1       # 0: one batch per process
    assert train_sft.grad_accum_steps(64, 8, 1) == 8
    assert train_sft.grad_accum_steps(8, 2, 2) == 2
    assert train_sft.grad_accum_steps(48, 4, 3) == 4
    for total, batch, world in [(6, 2, 2), (2, 2, 2), (10, 4, 1)]:
        with pytest.raises(UserError, match=f"--total_batch_size {total} is not a multiple of --batch_size {batch} "
                                            f"x {world} process"):
            train_sft.grad_accum_steps(total, batch, world)


def test_bad_total_batch_size_is_a_clear_error(tiny_data, tmp_path):
    with pytest.raises(UserError, match="not a multiple"):
        train_sft.main(tiny_cfg(tiny_data, str(tmp_path / "a"), "cot", batch_size=3, total_batch_size=8))
    with pytest.raises(UserError, match="must be >= 0"):
        train_sft.main(tiny_cfg(tiny_data, str(tmp_path / "b"), "cot", total_batch_size=-8))


@pytest.mark.parametrize("mode", list(MODES))
def test_accumulation_matches_the_whole_batch(tiny_data, tmp_path, mode):
    """One process, 4 micro-steps of 2 sequences: the weights of one step of 8 (per-token weighting of the CE, one
    scale update and one set of random draws per step)."""
    whole = train_sft.main(tiny_cfg(tiny_data, str(tmp_path / "whole"), mode, max_steps=2))
    accum = train_sft.main(tiny_cfg(tiny_data, str(tmp_path / "accum"), mode, max_steps=2, batch_size=2,
                                    total_batch_size=8))
    assert_close(weights(load_checkpoint(str(tmp_path / "whole"))), weights(load_checkpoint(str(tmp_path / "accum"))))
    assert whole["step"] == accum["step"] == 2


@pytest.mark.parametrize("mode", list(MODES))
def test_two_processes_match_one(tiny_data, tmp_path, capsys, mode):
    """torchrun with 2 processes x 2 micro-steps x 2 sequences against one process with batch_size 8, same seed:
    the same weights, the same log, one set of checkpoints; and the DDP run resumes in one process."""
    one = str(tmp_path / "one")
    train_sft.main(tiny_cfg(tiny_data, one, mode))
    one_log = capsys.readouterr().out

    ddp, ranks = str(tmp_path / "ddp"), tmp_path / "ranks"
    ranks.mkdir()
    cfg = tiny_cfg(tiny_data, ddp, mode, batch_size=2, total_batch_size=8)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "tests", "ddp_worker.py")] + flags(cfg)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DDP_WEIGHTS_DIR": str(ranks)}
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]

    final = load_checkpoint(ddp, "latest")
    assert not any(k.startswith("module.") for k in final["model"])  # the unwrapped model was saved
    assert final["config"]["total_batch_size"] == 8 and final["step"] == 3
    assert_close(weights(final), weights(load_checkpoint(one, "latest")))
    per_rank = [weights(torch.load(ranks / f"rank{r}.pt", weights_only=True)) for r in (0, 1)]
    assert all(torch.equal(per_rank[0][k], per_rank[1][k]) for k in per_rank[0])  # the processes ended equal
    assert sorted(os.listdir(ddp)) == sorted(os.listdir(one))  # one set of checkpoints (written by process 0)

    # one log, not two: the same progress and eval lines as the one-process run (losses gathered over processes)
    assert run.stdout.count("data_dir=") == 1 and run.stdout.count("done: 3 steps") == 1
    assert "batch: 8 sequences per step = 2 per pass x 2 process(es) x 2 micro-step(s)" in run.stdout
    assert step_lines(run.stdout) == step_lines(one_log) and len(step_lines(one_log)) == 5

    # resume the DDP run's step-2 checkpoint in one process (another split of the same 8 sequences): same end
    resumed = str(tmp_path / "resumed")
    shutil.copytree(ddp, resumed)
    with open(os.path.join(resumed, "latest"), "w") as f:
        f.write("ckpt_000002.pt\n")
    train_sft.main(tiny_cfg(tiny_data, resumed, mode, batch_size=4, total_batch_size=8, resume=True))
    assert_close(weights(load_checkpoint(resumed, "latest")), weights(load_checkpoint(one, "latest")))


def test_a_failure_in_process_0_stops_every_process(tiny_data, tmp_path):
    """Process 0 cannot write its step-2 checkpoint (a folder stands where the file goes): it stops with a one-line
    error (it was a traceback from inside torch.save), and torchrun stops process 1, which waits at the barrier."""
    out = tmp_path / "ddp"
    (out / "ckpt_000002.pt.tmp").mkdir(parents=True)
    cfg = tiny_cfg(tiny_data, str(out), "cot", batch_size=4, total_batch_size=8)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "train_sft.py")] + flags(cfg)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode != 0
    assert f"error: cannot write checkpoint {out / 'ckpt_000002.pt'}: Is a directory" in run.stderr, run.stderr[-3000:]
    assert "[rank0]: Traceback" not in run.stderr
    assert not os.path.exists(out / "latest")

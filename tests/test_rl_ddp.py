"""train_rl.py with several processes (torchrun, DistributedDataParallel on CPU with gloo): the rollouts of a shard do
not depend on the other shards drawn, and 2 processes give the weights, the log and the checkpoints of one process
with --rollout_shards 2; a NaN in one process stops them all. Run: .venv/bin/python -m pytest tests/test_rl_ddp.py"""
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import train_rl
from common import UserError, load_checkpoint, load_model, read_pointer
from data.format import read_split
from test_ddp import assert_close, flags, weights
from test_rl import rl_cfg, rl_setup  # noqa: F401 (rl_setup: the tiny CoLaR checkpoint RL starts from)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parity_reward(answer, reference, *args):  # as tests/rl_ddp_worker.py: mixed groups from a model never right
    return float(len(answer) % 2 == 0)


def step_lines(log):
    """The progress and eval lines of a log, without the timings and the checkpoint path."""
    lines = [re.sub(r" \| [\d.]+ min \| eta .*| \| saved .*", "", s) for s in log.splitlines()]
    return [s for s in lines if s.startswith(("step ", "eval step "))]


def torchrun(cfg, ranks, **env):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "tests", "rl_ddp_worker.py")] + flags(cfg)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DDP_WEIGHTS_DIR": str(ranks), **env}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_a_shards_rollouts_do_not_depend_on_the_other_shards(rl_setup):
    model, head, tok, _ = load_model(rl_setup["colar"])
    questions = [q for q, _, _ in read_split(os.path.join(rl_setup["data"], "train.txt"))[:8]]
    cfg = rl_cfg(rl_setup, "unused", rollout_shards=2)
    prompts, outs = train_rl.step_rollouts(model, head, tok, questions, cfg, step=3)  # one process, both shards
    alone = train_rl.shard_rollouts(model, head, tok, questions, cfg, 3, 2, [1])[1]
    assert len(outs) == 32 and prompts[16] == tok.prompt(questions[4], cfg.c)
    for a, b in zip(outs[16:], alone):
        assert (a["n_latents"], a["answer"], a["finished"], a["hit_cap"]) == \
               (b["n_latents"], b["answer"], b["finished"], b["hit_cap"])
        assert all(torch.equal(x, y) for x, y in zip(a["latents"], b["latents"]))
    assert any(o["latents"] for o in alone)  # the case tests the latents too
    other = train_rl.shard_rollouts(model, head, tok, questions, cfg, 4, 2, [1])[1]  # another step: other draws
    assert any(not torch.equal(x, y) for a, b in zip(alone, other) for x, y in zip(a["latents"], b["latents"]))


def test_bad_rollout_shards(rl_setup):
    with pytest.raises(UserError, match="--rollout_shards 3 does not divide --questions 8"):
        train_rl.main(rl_cfg(rl_setup, "bad_shards", rollout_shards=3))
    with pytest.raises(UserError, match="--rollout_shards must be >= 0"):
        train_rl.main(rl_cfg(rl_setup, "bad_shards", rollout_shards=-1))


def test_two_processes_match_one(rl_setup, tmp_path, capsys, monkeypatch):
    """torchrun with 2 processes (one rollout shard each) against one process with --rollout_shards 2, same seed: the
    same weights, the same log, one set of checkpoints; minibatches of 3 split 2 + 1 over the processes, and a last
    minibatch of 1 leaves one process nothing to train on. The DDP run resumes in one process; a NaN in one process
    of a DDP run stops both with the checkpoint kept."""
    monkeypatch.setattr(train_rl, "reward", parity_reward)
    kw = dict(max_steps=3, eval_every=2, minibatch=3, epochs=2)
    one = rl_cfg(rl_setup, "one", rollout_shards=2, **kw)
    train_rl.main(one)
    one_log = capsys.readouterr().out
    kept = [round(float(f) * 8) * 4 for f in re.findall(r"groups with signal ([\d.]+)", one_log)]
    assert any(n % 3 == 1 for n in kept), kept  # some minibatch holds 1 rollout: one process has an empty share

    ddp, ranks = rl_cfg(rl_setup, "ddp", **kw), tmp_path / "ranks"  # rollout_shards 0: one per process
    ranks.mkdir()
    run = torchrun(ddp, ranks)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    final = load_checkpoint(ddp.out_dir, "latest")
    assert not any(k.startswith("module.") for k in final["model"])  # the unwrapped model was saved
    assert final["step"] == 3 and final["rl_config"]["rollout_shards"] == 2
    assert_close(weights(final), weights(load_checkpoint(one.out_dir, "latest")))
    per_rank = [weights(torch.load(ranks / f"rank{r}.pt", weights_only=True)) for r in (0, 1)]
    assert all(torch.equal(per_rank[0][k], per_rank[1][k]) for k in per_rank[0])  # the processes ended equal
    assert sorted(os.listdir(ddp.out_dir)) == sorted(os.listdir(one.out_dir))  # one set of checkpoints
    assert run.stdout.count("init_from=") == 1 and run.stdout.count("done: 3 steps") == 1
    assert "in 2 shard(s) over 2 process(es)" in run.stdout
    assert step_lines(run.stdout) == step_lines(one_log) and len(step_lines(one_log)) == 6

    # the DDP run's step-2 checkpoint resumes in one process (with its 2 shards) to the same end
    resumed = rl_cfg(rl_setup, "resumed", rollout_shards=2, resume=True, **kw)
    shutil.copytree(ddp.out_dir, resumed.out_dir)
    with open(os.path.join(resumed.out_dir, "latest"), "w") as f:
        f.write("ckpt_000002.pt\n")
    with pytest.raises(UserError, match="--rollout_shards=1 does not match"):
        train_rl.main(rl_cfg(rl_setup, "resumed", resume=True, **kw))  # 0: one shard in one process
    train_rl.main(resumed)
    assert_close(weights(load_checkpoint(resumed.out_dir, "latest")), weights(load_checkpoint(one.out_dir, "latest")))

    # a NaN loss in process 1 only: both processes stop at step 3 with the error, the step-2 checkpoint is kept
    nan = rl_cfg(rl_setup, "nan", resume=True, **kw)
    shutil.copytree(ddp.out_dir, nan.out_dir)
    with open(os.path.join(nan.out_dir, "latest"), "w") as f:
        f.write("ckpt_000002.pt\n")
    run = torchrun(nan, ranks, NAN_RANK="1")
    assert run.returncode != 0 and run.stderr.count("became nan at step 3") == 2, run.stderr[-3000:]
    assert "ckpt_000002.pt is kept" in run.stderr and read_pointer(nan.out_dir, "latest") == "ckpt_000002.pt"

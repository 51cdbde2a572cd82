"""train_rl.py's command line, for tests/test_rl_ddp.py to run under torchrun. As in tests/test_rl.py's end-to-end
test, the reward is whether the answer's length is even (the tiny model never answers right; this gives groups with
mixed rewards). With $NAN_RANK set, that process's share of every minibatch has a NaN loss (the others' do not).
After training, every process saves its final weights, the steps it wrote checkpoints at and how many of its
minibatch shares were empty (it had run out of rollouts) to $DDP_WEIGHTS_DIR/rank{RANK}.pt."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import colar
import train_rl  # noqa: E402
from common import parse_config, run_cli  # noqa: E402

saves, empty = [], []
real_save, real_loss = train_rl.save_checkpoint, colar.rl_loss


def save_checkpoint(out_dir, step, *args, **kwargs):
    saves.append(step)
    return real_save(out_dir, step, *args, **kwargs)


def rl_loss(model, head, b, lat, logp_old, adv, *args, **kwargs):
    empty.append(adv.numel() == 0)
    return real_loss(model, head, b, lat, logp_old, adv, *args, **kwargs)


train_rl.save_checkpoint, colar.rl_loss = save_checkpoint, rl_loss
train_rl.reward = lambda answer, reference, *args: float(len(answer) % 2 == 0)
if os.environ.get("NAN_RANK") == os.environ["RANK"]:
    colar.aggregate = lambda per_action, *args: per_action.sum() * float("nan")
res = run_cli(train_rl.main, parse_config(train_rl.RLConfig))
weights = {"model": res["model"].state_dict(), "head": res["head"].state_dict(), "saves": saves, "empty": sum(empty)}
torch.save(weights, os.path.join(os.environ["DDP_WEIGHTS_DIR"], f"rank{os.environ['RANK']}.pt"))

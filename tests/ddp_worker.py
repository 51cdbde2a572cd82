"""train_sft.py's command line, for tests/test_ddp.py to run under torchrun: after training, every process also saves
its final weights, the steps at which it wrote a checkpoint and its loss history to $DDP_WEIGHTS_DIR/rank{RANK}.pt,
so the test can check that the processes ended equal and that only process 0 wrote."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train_sft  # noqa: E402
from common import parse_config, run_cli  # noqa: E402

saves = []
real_save = train_sft.save_checkpoint


def save_checkpoint(out_dir, step, *args, **kwargs):
    saves.append(step)
    return real_save(out_dir, step, *args, **kwargs)


train_sft.save_checkpoint = save_checkpoint
res = run_cli(train_sft.main, parse_config(train_sft.TrainConfig))
weights = {"model": res["model"].state_dict(), "head": res["head"].state_dict() if res["head"] else {},
           "saves": saves, "history": res["history"]}
torch.save(weights, os.path.join(os.environ["DDP_WEIGHTS_DIR"], f"rank{os.environ['RANK']}.pt"))

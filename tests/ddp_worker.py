"""train_sft.py's command line, for tests/test_ddp.py to run under torchrun: after training, every process also saves
its final weights to $DDP_WEIGHTS_DIR/rank{RANK}.pt, so the test can check that the processes ended equal."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train_sft  # noqa: E402
from common import parse_config, run_cli  # noqa: E402

res = run_cli(train_sft.main, parse_config(train_sft.TrainConfig))
weights = {"model": res["model"].state_dict(), "head": res["head"].state_dict() if res["head"] else {}}
torch.save(weights, os.path.join(os.environ["DDP_WEIGHTS_DIR"], f"rank{os.environ['RANK']}.pt"))

"""common.autocast: fp32 on CPU, bf16 on a CUDA GPU that has it; the training step runs under bf16 autocast.

Run: .venv/bin/python -m pytest tests/test_precision.py
"""
import pytest
import torch

import train_sft
from common import autocast
from data import synthetic


def test_cpu_stays_fp32():
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with autocast(torch.device("cpu")):
        assert (a @ b).dtype == torch.float32
    with autocast("cpu"):
        assert torch.nn.Linear(8, 3)(a).dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_uses_bf16_where_supported():
    a, b = torch.randn(4, 8, device="cuda"), torch.randn(8, 3, device="cuda")
    with autocast("cuda"):
        out = a @ b
    native = torch.cuda.get_device_capability() >= (8, 0)
    assert out.dtype == (torch.bfloat16 if native else torch.float32)
    assert (a @ b).dtype == torch.float32  # only inside the context


@pytest.mark.parametrize("mode", ["cot", "colar"])
def test_training_step_runs_under_bf16_autocast(tmp_path, monkeypatch, mode):
    """CPU's bf16 autocast stands in for CUDA's: the losses (CoLaR's latent loss too) run without dtype clashes and
    stay finite, and the weights stay fp32."""
    data = str(tmp_path / "synth")
    synthetic.main(synthetic.SynthConfig(out=data, n_train=32, n_val=4, n_test=4, steps_min=2, steps_max=2))
    entered = []

    def bf16(device):
        entered.append(device)
        return torch.autocast("cpu", dtype=torch.bfloat16)

    monkeypatch.setattr(train_sft, "autocast", bf16)
    kw = dict(mode="colar", c_values="1,2", max_latents=4, self_feed=0.5) if mode == "colar" else {}
    run = train_sft.main(train_sft.TrainConfig(data_dir=data, out_dir=str(tmp_path / "out"), n_layer=1, n_head=2,
                                               n_embd=32, batch_size=8, max_steps=2, warmup_steps=1, eval_every=2,
                                               eval_n=2, log_every=1, device="cpu", **kw))
    assert len(entered) == 2
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in run["model"].parameters())

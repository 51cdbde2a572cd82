"""common.autocast: fp32 on CPU, bf16 on a CUDA GPU that has it; the training step runs under bf16 autocast.

Run: .venv/bin/python -m pytest tests/test_precision.py
"""
import pytest
import torch
from conftest import tiny_gpt, tiny_train_cfg

import colar
import sample
import train_sft
from common import autocast
from latent_head import LatentHead


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
def test_training_step_runs_under_bf16_autocast(tiny_data, tmp_path, monkeypatch, mode):
    """CPU's bf16 autocast stands in for CUDA's: the losses (CoLaR's latent loss too) run without dtype clashes and
    stay finite, and the weights stay fp32."""
    entered = []

    def bf16(device):
        entered.append(device)
        return torch.autocast("cpu", dtype=torch.bfloat16)

    monkeypatch.setattr(train_sft, "autocast", bf16)
    kw = dict(mode="colar", c_values="1,2", max_latents=4, self_feed=0.5) if mode == "colar" else {}
    linear_out = set()  # the dtypes the model's linear layers computed in
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda m, args, out: linear_out.add(out.dtype) if isinstance(m, torch.nn.Linear) else None)
    try:
        run = train_sft.main(tiny_train_cfg(tiny_data, str(tmp_path / "out"), batch_size=8, max_steps=2,
                                            warmup_steps=1, eval_every=2, eval_n=2, log_every=1, **kw))
    finally:
        hook.remove()
    assert len(entered) == 2 and torch.bfloat16 in linear_out  # the training steps' matmuls ran in bf16
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in run["model"].parameters())


def test_decoding_and_rl_log_probs_under_bf16_autocast(monkeypatch, tok):
    """Decoding and RL's teacher-forced pass run the model under autocast (CPU bf16 standing in for CUDA's) and the
    latent head outside it, in fp32: the latents fed back stay fp32, and the log-probs stay fp32, close to the fp32
    pass's (the rollouts sample their latents, so those are not compared value by value)."""
    questions, c = ["1+2", "34*5", "6", "7-8+9"], 2
    model = tiny_gpt(tok.n_vocab, block_size=48, seed=0)
    head = LatentHead(16, sigma_min=0.3).eval()
    head.update_scale(torch.ones(1, 1, 16), torch.ones(1, 1, dtype=torch.bool))
    prompts = [colar.prompt(tok, q, c) for q in questions]
    outs = sample.generate_latent(model, head, tok, prompts, 3, 5, keep_latents=True)  # fp32 reference rollouts
    b, lat = colar.replay_batch(tok, questions, outs, c, "cpu")
    acts = b.latent_out | (b.targets != -1)
    assert b.latent_out.any() and (b.targets != -1).any()
    ref, _ = colar.action_log_probs(model, head, b, lat, tok.eot)

    def bf16(device):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    monkeypatch.setattr(sample, "autocast", bf16)
    monkeypatch.setattr(colar, "autocast", bf16)
    outs16 = sample.generate_latent(model, head, tok, prompts, 3, 5, keep_latents=True)
    assert all(z.dtype == torch.float32 for o in outs16 for z in o["latents"])
    logp, sigma = colar.action_log_probs(model, head, b, lat, tok.eot)
    assert logp.dtype == torch.float32 and sigma.dtype == torch.float32
    torch.testing.assert_close(logp[acts], ref[acts], rtol=0.05, atol=0.05)  # bf16 keeps ~3 significant digits
    assert not torch.equal(logp[acts], ref[acts])  # the model pass did run in bf16

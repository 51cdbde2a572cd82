"""Shared test set-up and helpers: the repository root importable, one thread, a tiny GPT, a char tokenizer, a tiny
synthetic data set and one tiny CoT -> CoLaR training run, built once per test run.

    from conftest import tiny_gpt, tiny_train_cfg      # plain helpers
    def test_x(tok, tiny_data, tiny_runs): ...          # fixtures

Run: .venv/bin/python -m pytest tests
"""
import os
import sys
from types import SimpleNamespace

import pytest
import torch

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
for path in (ROOT, TESTS):  # the project's modules; and `from conftest import ...` under any import mode
    if path not in sys.path:
        sys.path.insert(0, path)

torch.set_num_threads(1)  # the tests are tiny; one thread keeps them from competing with other work

from latent_head import LatentHead  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
from tokenizer import Tokenizer  # noqa: E402

# generate_latent and the RL replay need only these ids of a tokenizer (vocabulary 24)
FAKE_TOK = SimpleNamespace(pad=23, eot=1, eos=16)


# --- a tiny GPT ----------------------------------------------------------------------------------------------------
def tiny_gpt(vocab_size=24, block_size=40, n_layer=1, n_head=2, n_embd=16, pos_emb="rope", seed=0, init="gpt"):
    """A tiny GPT in eval mode, built after torch.manual_seed(seed).

    init "gpt": the model's own init (std 0.02: near-uniform logits, as a fresh model has);
         "sharp": matrices redrawn with std 1 / sqrt(fan_in), so attention is sharp, logits differ a lot between
                  positions and greedy decoding does not just repeat one token (a wrong mask or cache shows);
         "sharp_all": also LayerNorm gains ~ N(1, 0.1) and biases ~ N(0, 0.1)."""
    if init not in ("gpt", "sharp", "sharp_all"):
        raise ValueError(f"init must be gpt, sharp or sharp_all, got {init!r}")
    torch.manual_seed(seed)
    m = GPT(GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                      pos_emb=pos_emb))
    if init != "gpt":
        with torch.no_grad():
            for name, p in m.named_parameters():
                if p.dim() >= 2:
                    p.normal_(0.0, p.size(-1) ** -0.5)
                elif init == "sharp_all" and "ln" in name and name.endswith("weight"):
                    p.normal_(1.0, 0.1)
                elif init == "sharp_all":
                    p.normal_(0.0, 0.1)
    return m.eval()


def tiny_latent_model(seed=3, vocab_size=24, block_size=48, n_embd=16, sigma_min=0.0):
    """A sharp 1-layer GPT and a latent head of scale 1 (built right after it), both in float64 and eval mode, so
    that batched, padded, cached computations and a slow reference agree far below any argmax gap."""
    model = tiny_gpt(vocab_size, block_size, n_layer=1, n_embd=n_embd, seed=seed, init="sharp")
    head = LatentHead(n_embd, sigma_min=sigma_min)
    head.update_scale(torch.ones(1, 1, n_embd), torch.ones(1, 1, dtype=torch.bool))  # the RMS of ones: 1
    return model.double().eval(), head.double().eval()


# --- tiny training runs --------------------------------------------------------------------------------------------
def tiny_train_cfg(data_dir, out_dir, **kw):
    """A train_sft.TrainConfig for a run of seconds on the CPU (1 layer x 32, batches of 16, 8 steps)."""
    import train_sft  # here, not at the top: a broken trainer fails its own tests, not every test's collection
    base = dict(data_dir=data_dir, out_dir=out_dir, n_layer=1, n_head=2, n_embd=32, batch_size=16, max_steps=8,
                warmup_steps=2, eval_every=4, eval_n=4, log_every=4, device="cpu")
    base.update(kw)
    return train_sft.TrainConfig(**base)


def tiny_colar_cfg(data_dir, out_dir, init_from, **kw):
    """A tiny CoLaR run from a CoT run, trained on c = 1, 2 (8 steps, one checkpoint at the end)."""
    base = dict(mode="colar", init_from=init_from, c_values="1,2", max_latents=4, eval_every=8)
    base.update(kw)
    return tiny_train_cfg(data_dir, out_dir, **base)


def make_tiny_data(out, **kw):
    """A tiny synthetic data set in `out` (train 128, val 8, test 8; chains of 2-3 steps)."""
    from data import synthetic
    cfg = dict(out=out, n_train=128, n_val=8, n_test=8, steps_min=2, steps_max=3)
    cfg.update(kw)
    synthetic.main(synthetic.SynthConfig(**cfg))
    return out


# --- fixtures ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tok():
    """The char tokenizer (one token per character; `<<` and `>>` one token each)."""
    return Tokenizer("char")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """The folder of a tiny synthetic data set (make_tiny_data's sizes). Read it, never write into it."""
    return make_tiny_data(str(tmp_path_factory.mktemp("synth")))


@pytest.fixture(scope="session")
def tiny_runs(tiny_data, tmp_path_factory):
    """Paths of a tiny CoT run (4 steps) and a CoLaR run from it (tiny_colar_cfg: 8 steps, c = 1, 2), on tiny_data:
    {"data", "cot", "colar"}. Read them or start from them (--init_from); write new runs under tmp_path."""
    import train_sft
    root = tmp_path_factory.mktemp("runs")
    cot, colar = str(root / "cot"), str(root / "colar")
    train_sft.main(tiny_train_cfg(tiny_data, cot, max_steps=4))
    train_sft.main(tiny_colar_cfg(tiny_data, colar, cot))
    return {"data": tiny_data, "cot": cot, "colar": colar}

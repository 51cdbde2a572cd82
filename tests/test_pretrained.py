"""GPT-2 weights from Hugging Face: the conversion gives the same logits, the new tokens' rows, the missing-package
error, train_sft.py --init_from gpt2, and a GPT-2 folder written by save_pretrained, loaded and trained on offline.
Nothing is downloaded: the Hugging Face models are small and random.

Run: .venv/bin/python -m pytest tests/test_pretrained.py   (the conversion tests need: pip install transformers)
"""
import json
import math
import re
import socket
import sys
from dataclasses import replace

import pytest
import torch
from conftest import tiny_train_cfg

import train_sft
from checkpoint import load_checkpoint
from common import UserError
from model import GPT, GPTConfig

V, C, BLOCK = 100, 32, 64


def hf_gpt2(**kw):
    """A small random GPT2LMHeadModel with large weights, so that attention is sharp and logits differ a lot between
    positions (with GPT-2's 0.02 init everything is nearly uniform and a wrong detail would barely show)."""
    transformers = pytest.importorskip("transformers")
    cfg = dict(n_layer=2, n_head=2, n_embd=C, n_positions=BLOCK, vocab_size=V, bos_token_id=0, eos_token_id=0)
    cfg.update(kw)
    torch.manual_seed(0)
    m = transformers.GPT2LMHeadModel(transformers.GPT2Config(**cfg))
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, min(p.shape) ** -0.5)
            elif "ln" in name and name.endswith("weight"):
                p.normal_(1.0, 0.1)
            else:
                p.normal_(0.0, 0.1)
    return m.eval()


def ids(*shape, seed=1):
    return torch.randint(0, V, shape, generator=torch.Generator().manual_seed(seed))


def test_converted_model_gives_the_same_logits():
    hf = hf_gpt2()
    m = GPT.from_hf_gpt2(hf).eval()
    assert m.cfg == GPTConfig(vocab_size=V, block_size=BLOCK, n_layer=2, n_head=2, n_embd=C, pos_emb="learned",
                              bias=True, gelu_approx="tanh")
    assert m.lm_head.weight is m.wte.weight
    x = ids(3, BLOCK)
    with torch.no_grad():
        ours, theirs = m(x)[0], hf(x).logits
        assert ours.dtype == theirs.dtype == torch.float32
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
        # control: the exact GELU in place of GPT-2's tanh approximation is caught at this tolerance
        exact = GPT(replace(m.cfg, gelu_approx="none")).eval()
        exact.load_state_dict(m.state_dict())
        assert (exact(x)[0] - theirs).abs().max() > 5e-4


def test_converted_model_with_left_padding_and_position_ids():
    hf = hf_gpt2()
    m = GPT.from_hf_gpt2(hf).eval()
    x = ids(2, 12, seed=2)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[0, :5] = False  # row 0 is left-padded by 5
    pos = (mask.long().cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        ours = m(x, pos=pos, mask=mask)[0]
        theirs = hf(x, attention_mask=mask.long(), position_ids=pos).logits
        torch.testing.assert_close(ours[mask], theirs[mask], atol=1e-4, rtol=1e-4)
        # and the padded row's real tokens match that row alone, unpadded
        torch.testing.assert_close(ours[0, 5:], hf(x[:1, 5:]).logits[0], atol=1e-4, rtol=1e-4)


def test_exact_gelu_gpt2_converts_too():
    hf = hf_gpt2(activation_function="gelu")
    m = GPT.from_hf_gpt2(hf).eval()
    assert m.cfg.gelu_approx == "none"
    x = ids(2, 16, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(m(x)[0], hf(x).logits, atol=1e-4, rtol=1e-4)


def test_new_token_rows_are_the_mean_and_old_rows_are_copied():
    hf = hf_gpt2()
    m = GPT.from_hf_gpt2(hf, vocab_size=V + 6).eval()
    old = hf.transformer.wte.weight
    assert m.wte.weight.shape == (V + 6, C)
    assert torch.equal(m.wte.weight[:V], old)
    for i in range(V, V + 6):
        assert torch.equal(m.wte.weight[i], old.mean(dim=0))
    assert torch.equal(m.wpe.weight, hf.transformer.wpe.weight)
    x = ids(2, 10, seed=4)
    with torch.no_grad():
        logits = m(x)[0]
        # the pretrained tokens' logits are unchanged; each new token's logit is the mean of theirs (tied head)
        torch.testing.assert_close(logits[..., :V], hf(x).logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(logits[..., V], logits[..., :V].mean(-1), atol=1e-4, rtol=1e-4)


def test_conversion_refuses_what_it_cannot_represent():
    with pytest.raises(ValueError, match="smaller than"):
        GPT.from_hf_gpt2(hf_gpt2(), vocab_size=V - 1)
    with pytest.raises(ValueError, match="layer_norm_epsilon, tie_word_embeddings"):
        GPT.from_hf_gpt2(hf_gpt2(layer_norm_epsilon=1e-6, tie_word_embeddings=False))


def test_missing_transformers_gives_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` raise ImportError
    with pytest.raises(ImportError, match="pip install transformers"):
        GPT.from_pretrained("gpt2")
    with pytest.raises(ValueError, match="unknown pretrained model"):
        GPT.from_pretrained("gpt3")


# --- train_sft.py --init_from gpt2 -----------------------------------------------------------------------------
def fake_gpt2(calls):
    """Stands in for GPT.from_pretrained: a tiny "GPT-2" with the full vocabulary, no download, no transformers."""
    def from_pretrained(name, vocab_size=None):
        calls.append(name)
        torch.manual_seed(123)
        return GPT(GPTConfig(vocab_size=vocab_size, block_size=BLOCK, n_layer=1, n_head=2, n_embd=16,
                             pos_emb="learned", gelu_approx="tanh"))
    return from_pretrained


def gpt2_cfg(data_dir, out_dir, **kw):
    base = dict(init_from="gpt2", tokenizer="gpt2", batch_size=4, max_steps=2, warmup_steps=1, eval_every=2, eval_n=2,
                log_every=1, lr=1e-9, min_lr=1e-9)
    base.update(kw)
    return tiny_train_cfg(data_dir, out_dir, **base)


def test_init_from_gpt2_starts_from_the_pretrained_weights(tiny_data, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(GPT, "from_pretrained", staticmethod(fake_gpt2(calls)))
    run = train_sft.main(gpt2_cfg(tiny_data, str(tmp_path / "a")))
    start = fake_gpt2([])("gpt2", run["tokenizer"].n_vocab)
    assert calls == ["gpt2"] and run["tokenizer"].keep_ids is None and run["tokenizer"].n_vocab == 50257 + 6
    trained = run["model"].state_dict()
    assert run["model"].cfg == start.cfg
    for k, v in start.state_dict().items():  # at lr 1e-9 two steps move no weight visibly
        torch.testing.assert_close(trained[k], v, atol=1e-6, rtol=0)
    ckpt = load_checkpoint(str(tmp_path / "a"), "latest")
    assert ckpt["config"]["n_embd"] == 16 and ckpt["config"]["pos_emb"] == "learned"
    assert ckpt["model_config"]["gelu_approx"] == "tanh"

    # resuming rebuilds the model from the checkpoint: GPT-2 is not loaded again
    calls.clear()
    resumed = train_sft.main(gpt2_cfg(tiny_data, str(tmp_path / "a"), resume=True))
    assert calls == [] and resumed["step"] == 2
    assert all(torch.equal(trained[k], v) for k, v in resumed["model"].state_dict().items())


def test_init_from_gpt2_errors(tiny_data, tmp_path, monkeypatch):
    with pytest.raises(UserError, match="--init_from gpt2 needs --tokenizer gpt2"):
        train_sft.main(gpt2_cfg(tiny_data, str(tmp_path / "a"), tokenizer="char"))
    with pytest.raises(UserError, match="is for --mode colar"):
        train_sft.main(gpt2_cfg(tiny_data, str(tmp_path / "b"), init_from=str(tmp_path / "a")))
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(UserError, match="pip install transformers"):
        train_sft.main(gpt2_cfg(tiny_data, str(tmp_path / "c")))

    def offline(name, vocab_size=None):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files\nmore detail")
    monkeypatch.setattr(GPT, "from_pretrained", staticmethod(offline))
    with pytest.raises(UserError, match="offline, and not cached.*couldn't connect") as e:
        train_sft.main(gpt2_cfg(tiny_data, str(tmp_path / "d")))
    assert "more detail" not in str(e.value)  # one line


# --- a local GPT-2 folder (save_pretrained), offline -------------------------------------------------------------
@pytest.fixture
def offline(monkeypatch):
    """No network: Hugging Face's offline mode, and any connection attempt fails the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def connect(*args):
        raise AssertionError(f"a network connection was attempted: {args}")
    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "create_connection", connect)


def test_gpt2_folder_loads_offline_with_the_same_logits(tmp_path, offline):
    hf = hf_gpt2(vocab_size=50257, n_positions=256)
    hf.save_pretrained(tmp_path / "gpt2")
    m = GPT.from_pretrained(str(tmp_path / "gpt2")).eval()
    assert (m.cfg.vocab_size, m.cfg.block_size, m.cfg.n_layer, m.cfg.n_embd) == (50257, 256, 2, C)
    x = torch.tensor([[15496, 11, 995, 0, 50256, 464, 3290]])  # "Hello, world!" and more GPT-2 ids
    with torch.no_grad():
        torch.testing.assert_close(m(x)[0], hf(x).logits, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="has no config.json"):
        GPT.from_pretrained(str(tmp_path))


def test_a_folder_whose_config_is_not_a_gpt2_one_is_refused_in_one_line(tmp_path):
    """config.json holding a JSON string was an AttributeError; holding no JSON, a bare JSONDecodeError."""
    config = tmp_path / "config.json"
    for text, words in (('"gpt2"', "describes a model of type None, not GPT-2"),
                        ('{"model_type": "llama"}', "describes a model of type 'llama', not GPT-2"),
                        ("{model_type: gpt2", "cannot be read as JSON")):
        config.write_text(text)
        with pytest.raises(ValueError, match=re.escape(f"{config} {words}")):
            GPT.from_pretrained(str(tmp_path))


def test_init_from_a_gpt2_folder_trains_offline(tiny_data, tmp_path, offline):
    hf_gpt2(vocab_size=50257, n_positions=256).save_pretrained(tmp_path / "gpt2")
    folder = str(tmp_path / "gpt2")
    run = train_sft.main(gpt2_cfg(tiny_data, str(tmp_path / "a"), init_from=folder, mode="cot", lr=1e-3, min_lr=1e-4))
    assert run["step"] == 2 and all(math.isfinite(ce) for _, _, ce, _ in run["history"])
    ckpt = load_checkpoint(str(tmp_path / "a"), "latest")
    assert ckpt["model_config"]["n_layer"] == 2 and ckpt["model_config"]["vocab_size"] == 50257 + 6
    assert ckpt["config"]["init_from"] == folder


def test_init_from_a_folder_errors(tiny_data, tmp_path, offline):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither a run folder .* nor GPT-2 in Hugging Face's layout"):
        train_sft.main(gpt2_cfg(tiny_data, str(tmp_path / "a"), init_from=str(tmp_path / "empty")))
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(UserError, match="type 'llama', not GPT-2"):
        train_sft.main(gpt2_cfg(tiny_data, str(tmp_path / "b"), init_from=str(tmp_path / "llama")))
    hf_gpt2(vocab_size=50257, layer_norm_epsilon=1e-6).save_pretrained(tmp_path / "eps")
    with pytest.raises(UserError, match="differs from model.py's architecture in: layer_norm_epsilon$"):
        train_sft.main(gpt2_cfg(tiny_data, str(tmp_path / "c"), init_from=str(tmp_path / "eps")))
    (tmp_path / "eps" / "model.safetensors").unlink()  # a config without the weights
    with pytest.raises(UserError, match="cannot load GPT-2's weights from .*eps: ") as e:
        train_sft.main(gpt2_cfg(tiny_data, str(tmp_path / "d"), init_from=str(tmp_path / "eps")))
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="needs --tokenizer gpt2"):
        train_sft.main(gpt2_cfg(tiny_data, str(tmp_path / "e"), init_from=str(tmp_path / "eps"), tokenizer="char"))
    hf_gpt2().save_pretrained(tmp_path / "small")  # a GPT-2 of 100 ids cannot read GPT-2's tokenizer's 50,257
    with pytest.raises(UserError, match="its vocabulary has 100 ids, GPT-2's tokenizer 50,257"):
        train_sft.main(gpt2_cfg(tiny_data, str(tmp_path / "f"), init_from=str(tmp_path / "small")))

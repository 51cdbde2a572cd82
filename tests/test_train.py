"""train_sft.py on a tiny synthetic task: the schedule, the derived batch arithmetic, checkpoints, exact resume, the
refusals that protect a run folder, and evaluation end to end.

Run: .venv/bin/python -m pytest tests/test_train.py
"""
import json
import os
import re
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_colar_cfg, tiny_train_cfg as tiny_cfg

import colar
import evaluate
import train_sft
from checkpoint import load_checkpoint, save_checkpoint
from common import UserError
from data.format import read_split
from sample import load_model


def test_reduced_gpt2_vocabulary_covers_every_training_token():
    """Regression: the vocabulary was built from whole lines, where the chain's leading `<<` follows a space and is
    another BPE token than the `<<` that starts the separately encoded chain, so every chain began with <|unk|>."""
    examples = [("Tom has 3 apples.", ["3+5=8"], "8"), ("What is 16 minus 7?", ["16-7=9", "9*2=18"], "18")]
    cfg = train_sft.TrainConfig(tokenizer="gpt2", mode="cot")
    tok = train_sft.build_tokenizer(cfg, examples)
    for q, chain, ans in colar.encode(tok, examples, "cot"):
        assert tok.unk not in q + chain + ans
        assert tok.decode(chain).startswith("<<")
    assert tok.unk not in colar.prompt(tok, "Tom has 3 apples.", c=1)


def test_resume_is_exact(tiny_data, tmp_path):
    straight = train_sft.main(tiny_cfg(tiny_data, str(tmp_path / "a")))
    train_sft.main(tiny_cfg(tiny_data, str(tmp_path / "b"), stop_at=4))
    assert load_checkpoint(str(tmp_path / "b"), "latest")["step"] == 4
    resumed = train_sft.main(tiny_cfg(tiny_data, str(tmp_path / "b"), resume=True))
    a, b = straight["model"].state_dict(), resumed["model"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # and training did change the weights
    torch.manual_seed(1337)
    fresh = train_sft.GPT(straight["model"].cfg)
    assert not torch.equal(fresh.state_dict()["wte.weight"], a["wte.weight"])


def fake_clock(step):
    """A stand-in for the time module whose clock moves `step` seconds at each reading."""
    readings = iter(range(0, 10 ** 9, step))
    return SimpleNamespace(time=lambda: float(next(readings)))


def test_a_resumed_run_counts_the_seconds_of_the_processes_before_it(tiny_data, tmp_path, monkeypatch, capsys):
    """A checkpoint records the run's seconds over every process that trained it, so a run stopped and resumed tells
    its whole time (the demo sums them per stage), not its last process's: a first process whose clock runs 100 s per
    reading leaves at least several hundred, which the resumed process's checkpoints carry on from."""
    out = str(tmp_path / "run")
    monkeypatch.setattr(train_sft, "time", fake_clock(100))
    train_sft.main(tiny_cfg(tiny_data, out, stop_at=4))
    first = load_checkpoint(out, "latest")["seconds"]
    monkeypatch.undo()
    train_sft.main(tiny_cfg(tiny_data, out, resume=True))
    last = load_checkpoint(out, "latest")["seconds"]
    assert first >= 500 and first < last < first + 60
    told = re.search(r"; (\d+\.\d) min with the processes it resumed", capsys.readouterr().out)
    assert told and abs(float(told[1]) - last / 60) < 0.1  # the done line: the whole run, not its last process


def test_default_block_size_leaves_room_for_latents(tiny_data, tmp_path):
    # 2-3 step chains are short: the longest question with 64 latents, <|eot|>, answer and <|eos|> decides
    res = train_sft.main(tiny_cfg(tiny_data, str(tmp_path / "run"), max_steps=1))
    tok = res["tokenizer"]
    examples = [ex for split in ("train", "val") for ex in read_split(f"{tiny_data}/{split}.txt")]
    longest_q = max(len(tok.encode(q)) for q, _, _ in examples)
    longest_a = max(len(tok.encode(" " + a)) for _, _, a in examples)  # the answer as the layout writes it
    assert res["model"].cfg.block_size >= longest_q + 3 + 64 + 1 + longest_a + 1  # speed, c, bot; eot; eos
    assert res["model"].cfg.block_size >= max(len(colar.prompt(tok, q, 5)) for q, _, _ in examples) + 64 + 1 + 16  # RL


def test_resume_on_another_kind_of_device_is_a_clear_error(tiny_data, tmp_path):
    out = str(tmp_path / "run")
    train_sft.main(tiny_cfg(tiny_data, out, max_steps=4, stop_at=2))
    path = load_checkpoint(out, "latest")["path"]
    ckpt = torch.load(path, weights_only=True)
    ckpt["rng"]["train"] = [torch.zeros(16, dtype=torch.uint8)]  # a CUDA generator's state is 16 bytes
    torch.save(ckpt, path)
    with pytest.raises(UserError, match="another kind of device"):
        train_sft.main(tiny_cfg(tiny_data, out, max_steps=4, resume=True))


def test_refuses_to_overwrite_and_checks_resume(tiny_data, tmp_path):
    out = str(tmp_path / "run")
    train_sft.main(tiny_cfg(tiny_data, out, max_steps=4))
    before = sorted(os.listdir(out))
    with pytest.raises(UserError, match="--resume true"):
        train_sft.main(tiny_cfg(tiny_data, out, max_steps=4))
    with pytest.raises(UserError, match="n_embd"):
        train_sft.main(tiny_cfg(tiny_data, out, max_steps=8, n_embd=64, resume=True))
    with pytest.raises(UserError, match="no checkpoint"):
        train_sft.main(tiny_cfg(tiny_data, str(tmp_path / "empty"), resume=True))
    assert sorted(os.listdir(out)) == before  # nothing lost


def test_refuses_to_resume_a_folder_of_the_other_script(tiny_data, tmp_path):
    out = str(tmp_path / "rl_run")
    save_checkpoint(out, 3, {"script": "train_rl", "model": {}, "model_config": {}})  # as train_rl.py marks its own
    before = sorted(os.listdir(out))
    with pytest.raises(UserError, match="holds a run of train_rl, not of train_sft"):
        train_sft.main(tiny_cfg(tiny_data, out, resume=True))
    with pytest.raises(UserError, match="already holds checkpoints"):
        train_sft.main(tiny_cfg(tiny_data, out))
    assert sorted(os.listdir(out)) == before


def test_bad_checkpoints_get_clear_errors(tiny_data, tmp_path):
    out = str(tmp_path / "run")
    train_sft.main(tiny_cfg(tiny_data, out, max_steps=4))
    path = load_checkpoint(out)["path"]
    with pytest.raises(UserError, match="not found"):
        load_model(str(tmp_path / "nope.pt"))
    truncated = str(tmp_path / "truncated.pt")
    with open(path, "rb") as f, open(truncated, "wb") as g:
        g.write(f.read()[:1000])
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_model(truncated)
    ckpt = torch.load(path, weights_only=True)
    ckpt["model_config"]["n_embd"] = 64
    torch.save(ckpt, str(tmp_path / "mismatch.pt"))
    with pytest.raises(UserError, match="cannot be rebuilt from its own model config") as e:
        load_model(str(tmp_path / "mismatch.pt"))
    assert "\n" not in str(e.value)  # torch's message is several lines: one line here


def test_checkpoint_contents_and_pruning(tiny_data, tmp_path):
    out = str(tmp_path / "run")
    train_sft.main(tiny_cfg(tiny_data, out, max_steps=12, eval_every=2, keep_last=2))
    files = sorted(f for f in os.listdir(out) if f.endswith(".pt"))
    best = open(os.path.join(out, "best")).read().strip()
    assert "ckpt_000012.pt" in files and "ckpt_000010.pt" in files and best in files
    assert len(files) <= 3 and not any(f.endswith(".tmp") for f in os.listdir(out))
    ckpt = load_checkpoint(out, "latest")
    assert ckpt["step"] == 12 and ckpt["sampler"]["epoch"] == 1 and "torch" in ckpt["rng"]  # 12 x 16 > 128 examples
    assert ckpt["script"] == "train_sft" and ckpt["tokenizer"]["kind"] == "char" and ckpt["config"]["mode"] == "cot"
    assert ckpt["latent_head"] is None


def test_train_evaluate_end_to_end(tiny_data, tmp_path):
    """A tiny model learns the output format; evaluation writes well-formed records for CoT and No-CoT."""
    out_json = str(tmp_path / "results.json")
    for mode in ("cot", "nocot"):
        run = str(tmp_path / mode)
        train_sft.main(tiny_cfg(tiny_data, run, mode=mode, max_steps=60, eval_every=60, lr=3e-3))
        recs = evaluate.main(evaluate.EvalConfig(ckpt=run, split="test", decode="greedy,sampled", seeds="0,1",
                                                 out=out_json, device="cpu"))
        assert [r["decode"] for r in recs] == ["greedy", "sampled"]
    recs = json.load(open(out_json))
    assert {(r["method"], r["decode"]) for r in recs} == {(m, d) for m in ("cot", "nocot")
                                                          for d in ("greedy", "sampled")}
    keys = {"method", "c", "decode", "split", "n", "accuracy", "mean_len", "ci95", "len_ci95", "seeds", "checkpoint",
            "seconds"}
    for r in recs:
        assert keys <= set(r) and r["n"] == 8 and 0 <= r["accuracy"] <= 1
        assert (r["ci95"] is None) == (r["decode"] == "greedy")
    nocot = [r for r in recs if r["method"] == "nocot"]
    assert all(r["mean_len"] == 0 and r["c"] == 0 for r in nocot)
    cot_greedy = next(r for r in recs if r["method"] == "cot" and r["decode"] == "greedy")
    assert cot_greedy["mean_len"] > 5  # after 60 steps the model writes a chain before answering


def test_a_colar_run_from_a_colar_run_keeps_its_latent_head(tiny_runs):
    """--init_from a CoLaR run (a curriculum over c: train on some speeds, then on more) starts from its latent head,
    not a new one, also a deterministic head (the DL switch at a later stage); a head of another width starts new."""
    from conftest import tiny_colar_cfg
    from model import GPTConfig
    init = load_checkpoint(tiny_runs["colar"])
    model_cfg = GPTConfig(**init["model_config"])
    for switch, kept in ((dict(), True), (dict(deterministic=True), True), (dict(latent_hidden=8), False)):
        cfg = tiny_colar_cfg(tiny_runs["data"], "unused", tiny_runs["colar"], **switch)
        _, head, _, _ = train_sft.build_model(cfg, model_cfg, init, "cpu")
        same = all(torch.equal(v, init["latent_head"][k]) for k, v in head.state_dict().items()
                   if k in init["latent_head"] and v.shape == init["latent_head"][k].shape)
        assert same == kept


@pytest.mark.parametrize("flag, value, message", [
    ("latent_hidden", -1, "--latent_hidden must be >= 0, got -1"),  # was a negative dimension inside nn.Linear
    ("number_digits", 0, "--number_digits must be positive, got 0"),
    ("self_feed", 1.5, "--self_feed is a fraction of the latent inputs, between 0 and 1; got 1.5"),
    ("self_feed", -0.1, "--self_feed must be >= 0, got -0.1"),
    ("warmup_steps", -5, "--warmup_steps must be >= 0, got -5"),
    ("latent_weight", -1.0, "--latent_weight must be >= 0, got -1.0"),
    ("keep_last", -1, "--keep_last must be >= 0, got -1")])
def test_train_sft_refuses_flags_out_of_range(tiny_data, tmp_path, flag, value, message):
    with pytest.raises(UserError) as e:
        train_sft.check_config(train_sft.TrainConfig(data_dir=tiny_data, mode="colar", **{flag: value}))
    assert str(e.value) == message
    train_sft.check_config(train_sft.TrainConfig(data_dir=tiny_data, mode="colar"))  # the defaults pass


def test_train_sft_refuses_number_tokens_it_cannot_build(tiny_data):
    """(was a ValueError from the tokenizer, after the data was read)"""
    with pytest.raises(UserError, match="--number_digits must be 2, 3 or 4 with --tokenizer number, got 5"):
        train_sft.check_config(train_sft.TrainConfig(data_dir=tiny_data, tokenizer="number", number_digits=5))
    train_sft.check_config(train_sft.TrainConfig(data_dir=tiny_data, tokenizer="char", number_digits=5))  # unused


def test_dropout_is_the_runs_own_also_from_a_starting_model(tiny_runs, tmp_path):
    """--dropout with --init_from: the new run's rate (it was the starting model's, with the flag ignored)."""
    out = str(tmp_path / "colar")
    run = train_sft.main(tiny_colar_cfg(tiny_runs["data"], out, tiny_runs["cot"], dropout=0.25, max_steps=1))
    assert run["model"].cfg.dropout == 0.25 and load_checkpoint(out, "latest")["model_config"]["dropout"] == 0.25
    assert load_checkpoint(tiny_runs["cot"])["model_config"]["dropout"] == 0.0  # the control: the start had none



def test_a_resumed_run_keeps_the_record_of_what_it_started_from(tiny_runs, tmp_path):
    """A CoLaR run records the checkpoint it started from (path, step, SHA-256 of its bytes: what the demo compares
    with its start's best now); resumed after that start has changed, it keeps the record of the start it had."""
    import shutil
    from checkpoint import file_sha256, load_checkpoint, resolve_checkpoint
    cot, out = str(tmp_path / "cot"), str(tmp_path / "colar")
    shutil.copytree(tiny_runs["cot"], cot)
    start = resolve_checkpoint(cot)
    train_sft.main(tiny_colar_cfg(tiny_runs["data"], out, cot, max_steps=2, eval_every=2))
    first = load_checkpoint(out, "latest")["started_from"]
    assert first == {"path": start, "step": load_checkpoint(cot)["step"], "sha256": file_sha256(start)}
    saved = torch.load(start, weights_only=True)  # the start changes (as if trained further): other bytes
    torch.save({**saved, "seconds": 1e6}, start)
    assert file_sha256(start) != first["sha256"]
    train_sft.main(tiny_colar_cfg(tiny_runs["data"], out, cot, max_steps=4, eval_every=2, resume=True))
    resumed = load_checkpoint(out, "latest")
    assert resumed["step"] == 4 and resumed["started_from"] == first

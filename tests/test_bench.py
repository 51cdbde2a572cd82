"""Tests of bench.py: decoding without the KV cache gives sample.generate's tokens, and a tiny end-to-end run.

Run: .venv/bin/python -m pytest tests/test_bench.py
"""
import json

import pytest

from conftest import tiny_gpt

from bench import BenchConfig, generate_nocache, main
from common import UserError
from sample import generate

PROMPTS = [[3, 1, 4, 1, 5], [9], [2, 6, 5, 3, 5, 8, 9], [7, 9, 3], [23, 0]]


def tiny(block_size=40, seed=0):
    """A 2-layer GPT with large random weights, so greedy decoding does not just repeat one token."""
    return tiny_gpt(24, block_size, n_layer=2, n_embd=32, seed=seed, init="sharp")


def test_nocache_decoding_equals_cached_with_early_stops():
    m = tiny()
    free = generate(m, PROMPTS, 10, stop_id=-1, pad_id=0)
    assert generate_nocache(m, PROMPTS, 10, stop_id=-1, pad_id=0) == free
    stop_id = free[0][2]  # row 0 stops at its third token (or earlier); other rows at other steps or never
    out = generate(m, PROMPTS, 10, stop_id=stop_id, pad_id=0)
    assert len({len(o) for o in out}) >= 3, out  # rows really leave the batch at different steps
    assert generate_nocache(m, PROMPTS, 10, stop_id=stop_id, pad_id=0) == out
    short = tiny(block_size=10)  # the longest prompt has 7 tokens: room for 4 new ones (the last never fed)
    assert generate_nocache(short, PROMPTS, 50, -1, 0) == generate(short, PROMPTS, 50, -1, 0)


def test_bench_end_to_end(tmp_path):
    path = tmp_path / "bench.json"
    cfg = BenchConfig(n_layer=1, n_head=2, n_embd=16, batch_size=4, questions=6, repeats=1, warmup=0, device="cpu",
                      out=str(path))
    main(cfg)
    res = json.loads(path.read_text())
    train, decode, kv = res["train"], res["decode"], res["kv_cache"]
    assert set(train) == {"cot", "colar_c1", "colar_mix"}
    assert set(decode) == {"text"} | {f"colar_c{c}" for c in range(1, 6)}
    assert set(kv) == {"on", "off"}
    for rows, keys in ((train, ("s_per_step", "tokens_per_s", "s_per_example")), (decode, ("s_per_question",)),
                       (kv, ("s_per_question",))):
        for r in rows.values():
            assert r["peak_mem_mb"] > 0 and r["rss_before_mb"] > 0
            assert all(r[key] > 0 for key in keys)
    assert train["colar_c1"]["tokens_per_step"] == train["cot"]["tokens_per_step"]  # c=1: the same sequence lengths
    assert train["colar_mix"]["tokens_per_step"] < train["cot"]["tokens_per_step"]


def test_bench_refuses_a_decode_row_that_stopped_before_its_cap(tmp_path, monkeypatch):
    """Each timed decode row must do its method's whole work (a speed's latents up to its cap): a row that stopped
    early would make that speed look cheaper, so the benchmark stops and names the method."""
    import bench
    real = bench.answer_questions

    def one_row_short(model, tok, questions, c, **kw):
        rows = real(model, tok, questions, c, **kw)
        return rows if c != 3 else [{**rows[0], "length": rows[0]["length"] - 1}] + rows[1:]
    monkeypatch.setattr(bench, "answer_questions", one_row_short)
    with pytest.raises(RuntimeError, match="colar_c3: a row stopped before its cap"):
        main(BenchConfig(n_layer=1, n_head=2, n_embd=16, batch_size=4, questions=6, repeats=1, warmup=0, device="cpu",
                         out=str(tmp_path / "bench.json")))


def test_bench_refuses_an_output_it_could_not_write_before_running(tmp_path, monkeypatch):
    import bench
    monkeypatch.setattr(bench, "load_examples", lambda *a: pytest.fail("the benchmark began"))
    for out, message in ((tmp_path, "is a folder"), (tmp_path / "f.json" / "x.json", "is a file, not a folder")):
        (tmp_path / "f.json").write_text("{}")
        with pytest.raises(UserError, match=message):
            main(BenchConfig(n_layer=1, n_head=2, n_embd=16, device="cpu", out=str(out)))


@pytest.mark.parametrize("flag, value, words", [("lr", -1.0, "--lr must be positive"),
                                                ("weight_decay", -0.1, "--weight_decay must be >= 0"),
                                                ("grad_clip", -1.0, "--grad_clip must be >= 0")])
def test_bench_refuses_training_settings_before_running(flag, value, words, monkeypatch):
    """A negative lr or weight decay was a ValueError from AdamW after the model was built; a negative clip flipped
    the gradients' sign in silence."""
    import bench
    monkeypatch.setattr(bench, "load_examples", lambda *a: pytest.fail("the benchmark began"))
    with pytest.raises(UserError, match=f"^{words}, got {value}$"):
        main(BenchConfig(n_layer=1, n_head=2, n_embd=16, device="cpu", **{flag: value}))


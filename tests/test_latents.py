"""Tests of latents.py (the heatmaps of what CoLaR's latents resemble): the similarity matrix and the chunk outlines
as pure functions, and the script on a tiny CoT -> CoLaR run (the picture itself only where matplotlib is installed).

Run: .venv/bin/python -m pytest tests/test_latents.py
"""
import math
import sys

import pytest
import torch
import torch.nn.functional as F

import colar
import latents
import train_sft
from common import UserError
from data import synthetic
from data.format import DataError, chain_text, read_split
from sample import answer_questions, load_model


def test_similarity_by_hand():
    E = torch.tensor([[1.0, 0, 0], [0, 2, 0], [0, 0, 3], [1, 1, 0]])  # (T, C) = (4, 3)
    Z = torch.tensor([[0.0, 5, 0], [1, -1, 0], [0, 0, 0]])             # (K, C) = (3, 3)
    r = 1 / math.sqrt(2)
    expected = torch.tensor([[0.0, 1, 0, r],     # a latent along token 2's embedding: cosine 1 there
                             [r, -r, 0, 0],      # orthogonal to token 3 and to token 4
                             [0, 0, 0, 0]])      # a zero latent resembles nothing
    assert torch.allclose(latents.similarity(Z, E), expected, atol=1e-6)
    assert latents.similarity(torch.zeros(0, 3), E).shape == (0, 4)  # no latents: no rows


def test_chunk_spans():
    assert latents.chunk_spans(4, 7, 2) == [(0, 2), (2, 4), (4, 6), (6, 7)]  # the last chunk is partial
    assert latents.chunk_spans(3, 3, 1) == [(0, 1), (1, 2), (2, 3)]
    assert latents.chunk_spans(3, 4, 3) == [(0, 3), (3, 4), (4, 4)]  # latent 3 lies past the chain: no chunk


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny data, a tiny CoT run, and a CoLaR run initialised from it (trained on c = 1, 2)."""
    root = tmp_path_factory.mktemp("latents")
    data = str(root / "synth")
    synthetic.main(synthetic.SynthConfig(out=data, n_train=64, n_val=4, n_test=4, steps_min=2, steps_max=2))
    tiny = dict(data_dir=data, n_layer=1, n_head=2, n_embd=32, batch_size=16, warmup_steps=1, eval_n=2, log_every=4,
                device="cpu")
    cot = str(root / "cot")
    train_sft.main(train_sft.TrainConfig(out_dir=cot, mode="cot", max_steps=2, eval_every=2, **tiny))
    colar = str(root / "colar")
    train_sft.main(train_sft.TrainConfig(out_dir=colar, mode="colar", init_from=cot, c_values="1,2", max_latents=4,
                                         max_steps=4, eval_every=4, **tiny))
    return {"data": data, "cot": cot, "colar": colar, "root": root}


def test_main_computes_a_matrix_per_speed(runs, monkeypatch):
    drawn = {}
    monkeypatch.setattr(latents, "draw", lambda panels, labels, path: drawn.update(labels=labels, path=path))
    cfg = latents.LatentsConfig(ckpt=runs["colar"], data_dir=runs["data"], max_latents=4, out="x.png", device="cpu")
    panels = latents.main(cfg)
    assert [p["c"] for p in panels] == [1, 2]  # the trained speeds by default
    model, head, tok, _ = load_model(runs["colar"])
    question, steps, answer = read_split(f"{runs['data']}/val.txt")[0]
    ids = tok.encode(chain_text(steps))
    assert len(drawn["labels"]) == len(ids) and drawn["path"] == "x.png"
    assert "".join(drawn["labels"]).replace("␣", " ") == chain_text(steps)
    for p in panels:
        r = answer_questions(model, tok, [question], p["c"], head=head, max_latents=4, keep_latents=True)[0]
        assert p["sims"].shape == (len(r["latents"]), len(ids)) and p["answer"] == r["answer"]
        assert p["reference"] == answer
        for k, z in enumerate(r["latents"]):  # against torch's own cosine
            assert torch.allclose(p["sims"][k], F.cosine_similarity(z[None], model.wte.weight[ids], dim=-1),
                                  atol=1e-5)
    # a question given on the command line, at a speed it was never trained on
    panels = latents.main(latents.LatentsConfig(ckpt=runs["colar"], question="1+2||<<1+2=3>> #### 3", c="3",
                                                max_latents=4, device="cpu"))
    assert [p["c"] for p in panels] == [3] and panels[0]["sims"].size(1) == 7  # <<, 1, +, 2, =, 3, >>
    assert drawn["labels"] == ["<<", "1", "+", "2", "=", "3", ">>"]


def test_main_refuses_what_it_cannot_draw(runs):
    with pytest.raises(UserError, match="no latent head"):
        latents.main(latents.LatentsConfig(ckpt=runs["cot"], data_dir=runs["data"], device="cpu"))
    with pytest.raises(UserError, match="--c must be"):
        latents.main(latents.LatentsConfig(ckpt=runs["colar"], data_dir=runs["data"], c="0", device="cpu"))
    with pytest.raises(UserError, match="empty chain"):
        latents.main(latents.LatentsConfig(ckpt=runs["colar"], question="q|| #### 3", device="cpu"))
    with pytest.raises(DataError, match="--question: malformed"):
        latents.main(latents.LatentsConfig(ckpt=runs["colar"], question="no separator", device="cpu"))
    with pytest.raises(UserError, match="--max_latents must be positive, got -3"):  # it drew a picture of nothing
        latents.main(latents.LatentsConfig(ckpt=runs["colar"], data_dir=runs["data"], max_latents=-3, device="cpu"))
    with pytest.raises(UserError, match="--out x.xyz: a picture ends in one of"):  # matplotlib failed after the model
        latents.main(latents.LatentsConfig(ckpt=runs["colar"], data_dir=runs["data"], out="x.xyz", device="cpu"))
    with pytest.raises(UserError, match="--out needs a file name, got ''"):  # it wrote ./.png
        latents.main(latents.LatentsConfig(ckpt=runs["colar"], data_dir=runs["data"], out="", device="cpu"))


def test_missing_matplotlib_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    with pytest.raises(UserError, match=r"^the picture needs matplotlib: pip install matplotlib"):
        latents.draw([], [], "x.png")


def test_picture_is_written(runs, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "pics" / "latents.png"
    panels = latents.main(latents.LatentsConfig(ckpt=runs["colar"], data_dir=runs["data"], split="test",
                                                max_latents=4, out=str(out), device="cpu"))
    assert len(panels) == 2
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- the probe: reading the true compressed chain against writing latents ------------------------------------------
def slow_true_chain_logits(model, tok, example, c):
    """Independent of latents.true_chain_logits: one example, unpadded, its true chunks summed / sqrt(n) by hand,
    <|eot|>, then the reference answer and <|eos|>; the logits from <|eot|> on, the ids they should predict, and the
    hidden states at the prompt's last position and at each chunk but the last (from which the chunks are written)."""
    q, steps, answer = example
    chain = tok.encode(chain_text(steps))
    E = model.wte.weight
    xs = [E[i] for i in colar.prompt(tok, q, c)]
    for k in range(0, len(chain), c):
        part = chain[k:k + c]
        xs.append(sum(E[i] for i in part) / math.sqrt(len(part)))
    tail = [tok.eot] + tok.encode(" " + answer) + [tok.eos]
    xs += [E[i] for i in tail[:-1]]
    with torch.no_grad():
        logits, _, h = model(embeds=torch.stack(xs)[None])
    start, K = len(colar.prompt(tok, q, c)) - 1, -(-len(chain) // c)
    return logits[0, -(len(tail) - 1):], tail[1:], h[0, start:start + K]


def test_true_chain_logits_and_verdicts_against_a_slow_reference(tiny_runs):
    model, head, tok, _ = load_model(tiny_runs["colar"])
    examples = read_split(f"{tiny_runs['data']}/val.txt")[:6]
    for c in (1, 2, 3):
        logits, h, b, _, _ = latents.true_chain_logits(model, tok, examples, c)
        verdicts = latents.read_true_chain(model, tok, examples, c)
        written = latents.written_latents(head, h, b)
        for i, ex in enumerate(examples):
            ref, want, h_ref = slow_true_chain_logits(model, tok, ex, c)
            start = int(b.eot_at[i]) + 1  # the position of <|eot|>: it predicts the first answer token
            torch.testing.assert_close(logits[i, start:start + len(ref)], ref, atol=1e-4, rtol=1e-4)
            assert verdicts[i] == (ref.argmax(-1).tolist() == want)
            with torch.no_grad():  # greedy writing is mu, times the head's scale
                torch.testing.assert_close(torch.stack(written[i]), head(h_ref)[0] * head.scale, atol=1e-4, rtol=1e-4)


def test_probe_nearest_rates_by_construction(tiny_runs, monkeypatch):
    model, head, tok, _ = load_model(tiny_runs["colar"])
    examples = read_split(f"{tiny_runs['data']}/val.txt")[:4]
    c = 2
    b = colar.layout(tok, colar.encode(tok, examples, "colar"), c, latent=True)
    z, zmask = latents.true_chunks(model, b, c)
    per_row = [list(z[i][zmask[i]]) for i in range(len(examples))]  # each example's true chunks, in order

    def fake(latents_of, right=(), finished=True):
        """Rows whose latents are latents_of(i), answering right (the reference) for the rows in `right`."""
        def answer_questions(model, tok, questions, c, **kw):
            return [{"answer": examples[i][2] if i in right else "", "finished": finished,
                     "length": len(latents_of(i)), "latents": latents_of(i)} for i in range(len(questions))]
        return answer_questions
    K = min(len(r) for r in per_row)

    def expected(k, source):
        """Generated latent i is the true chunk k of example source(i): a hit when that chunk is example i's own, or
        identical to it (a tie); no two different chunks here are equally near."""
        return sum(torch.equal(per_row[source(i)][k], per_row[i][k]) for i in range(len(per_row))) / len(per_row)
    monkeypatch.setattr(latents, "answer_questions", fake(lambda i: per_row[i], right={0}))  # its own chunks
    r = latents.probe(model, head, tok, examples, c)
    assert r["nearest"][:K] == [1.0] * K and r["generated"] == 0.25  # 1 of 4 answered right
    monkeypatch.setattr(latents, "answer_questions", fake(lambda i: per_row[i], right={0}, finished=False))
    assert latents.probe(model, head, tok, examples, c)["generated"] == 0.0  # the right value, cut short: wrong
    chains = [chain for _, chain, _ in colar.encode(tok, examples, "colar")]
    assert r["chunks"] == r["latents"] == sum(-(-len(ch) // c) for ch in chains) / len(examples)  # ceil(L / c) each
    nxt = lambda i: (i + 1) % len(per_row)  # noqa: E731
    monkeypatch.setattr(latents, "answer_questions", fake(lambda i: per_row[nxt(i)]))  # the next example's
    shifted = latents.probe(model, head, tok, examples, c)["nearest"]
    assert shifted[:K] == [expected(k, nxt) for k in range(K)] and min(shifted) < 1.0


def test_nearest_rates_compare_with_every_true_chunk():
    z = torch.eye(6).reshape(3, 2, 6)  # 3 examples, 2 chunks each, all 6 orthogonal
    zmask = torch.ones(3, 2, dtype=torch.bool)
    # example 0 writes example 1's first chunk, example 1 writes nothing, example 2 writes its own chunks: at position
    # 0 example 0 misses (example 1's chunk is a candidate though its latents stop early), example 2 hits
    rates = latents.nearest_rates([[z[1, 0]], [], [z[2, 0], z[2, 1]]], z, zmask)
    assert rates == [0.5, 1.0]
    assert latents.nearest_rates([[z[0, 0]], [], []], z, zmask) == [1.0]  # no example reaches position 1


def test_probe_cli_prints_a_line_per_speed(tiny_runs, capsys):
    out = latents.main(latents.LatentsConfig(ckpt=tiny_runs["colar"], data_dir=tiny_runs["data"], probe=3,
                                             max_latents=8, device="cpu"))
    assert sorted(out) == [1, 2] and all(0 <= out[c]["read"] <= 1 for c in out)
    assert all(0 <= x <= 1 for c in out for x in out[c]["written"]) and out[1]["written"]
    text = capsys.readouterr().out
    lines = [s for s in text.splitlines() if s.startswith("c=")]
    assert len(lines) == 2 and "read (true chain)" in lines[0] and text.count("written from the true chain") == 2
    assert text.count("the first example's chunks: ") == 2


def test_probe_refuses_examples_longer_than_the_context(tiny_runs, tmp_path, monkeypatch):
    """Another task's data (longer chains) was a ValueError from inside the model's forward; now one line, before
    the model is run. A missing matplotlib is found before the picture's model answers, not after."""
    long_q = "+".join(["1"] * 100)
    (tmp_path / "val.txt").write_text(f"{long_q}||<<1+1=2>> #### 2\n")
    ran = []
    monkeypatch.setattr(latents, "probe", lambda *a, **kw: ran.append(a))
    with pytest.raises(UserError, match=r"^at c = 1 the longest of these examples with its true chain takes 2.. "
                                        r"positions, but the model's context is "):
        latents.main(latents.LatentsConfig(ckpt=tiny_runs["colar"], data_dir=str(tmp_path), probe=3, device="cpu"))
    assert ran == []
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setattr(latents, "answer_questions", lambda *a, **kw: ran.append(a))
    with pytest.raises(UserError, match=r"^the picture needs matplotlib"):
        latents.main(latents.LatentsConfig(ckpt=tiny_runs["colar"], data_dir=tiny_runs["data"], split="test",
                                           out=str(tmp_path / "l.png"), device="cpu"))
    assert ran == []


def test_chunk_texts_one_per_latent():
    from tokenizer import Tokenizer
    tok = Tokenizer("place")  # '<<' and '>>' are one token each; a digit's token also says its place
    assert latents.chunk_texts(tok, ["12", "34=46"], 2) == ["<<1", "2>>", " <<", "34", "=4", "6>>"]
    assert latents.chunk_texts(tok, ["12", "34=46"], 5) == ["<<12>> ", "<<34=4", "6>>"]
    assert latents.chunk_texts(tok, ["12"], 1) == ["<<", "1", "2", ">>"]


def test_digit_family_keeps_the_place():
    from tokenizer import Tokenizer
    place, char = Tokenizer("place"), Tokenizer("char")
    ids = place.encode("305=12")
    assert latents.digit_family(place, ids[1]) == [place.encode(f"3{d}")[1] for d in range(10)]  # place 1
    assert latents.digit_family(place, ids[0]) == [place.encode(str(d))[0] for d in range(10)]  # place 0
    assert latents.digit_family(place, ids[3]) == [] and latents.digit_family(char, char.encode("=")[0]) == []
    assert char.decode(latents.digit_family(char, char.encode("7")[0])) == "0123456789"
    assert latents.digit_family(Tokenizer("number"), Tokenizer("number").encode("12")[0]) == []


def test_digit_rates_by_hand():
    """One-hot embeddings, so every cosine is worked by hand: a latent equal to its chunk writes every digit; one
    with a digit swapped writes the other digit of the chunk only; one that leaves a digit out ties every swap of
    it, which is no hit."""
    from tokenizer import Tokenizer
    tok = Tokenizer("place")
    E = torch.eye(tok.n_vocab)
    chain = tok.encode("<<305=12>>")  # chunks at c = 2: <<3 | 05 | =1 | 2>>
    true = [E[chain[k:k + 2]].sum(0) for k in range(0, 8, 2)]
    five_as_seven = tok.encode("307")[2]
    wrong = [true[0], E[chain[2]] + E[five_as_seven], true[2], E[chain[7]]]  # 05 written 07; 2>> written >>
    rates = latents.digit_rates([true, wrong], [chain, chain], E, tok, 2)
    assert rates == [[None, 1.0], [1.0, 0.5], [None, 1.0], [0.5, None]]
    assert latents.digit_rates([wrong[:2]], [chain], E, tok, 2) == [[None, 1.0], [1.0, 0.0], [None, None],
                                                                    [None, None]]  # no latent past the second


def test_label_rates_by_hand():
    from tokenizer import Tokenizer
    tok = Tokenizer("place")
    chain = tok.encode("<<305=12>>")  # chunks at c = 2: <<3 | 05 | =1 | 2>>
    right = torch.zeros(4, tok.n_vocab)
    for k in range(4):
        right[k, chain[2 * k:2 * k + 2]] = 1.0  # each true token of the chunk ranked first among its place
    wrong = right.clone()
    wrong[1, tok.encode("307")[2]] = 2.0  # chunk 05: the 7 at place 2 outranks the 5
    wrong[3, tok.encode("<<1")[0]] = 5.0  # no digit: the delimiter's logit does not count
    rates = latents.label_rates([right, wrong], [chain, chain], tok, 2)
    assert rates == [[None, 1.0], [1.0, 0.5], [None, 1.0], [1.0, None]]


def test_probe_prints_where_a_digit_is_left_out():
    assert latents.digits_text([[None, 1.0], [0.95, 0.9]], [[None, 0.0], [0.0, 0.0]]).startswith("none")
    text = latents.digits_text([[None, 1.0], [1.0, 0.12], [0.5, None]], [[None, 1.0], [1.0, 0.14], [0.25, None]])
    assert text == "1: 100/12 | 2: 50/-; the LM head's chunk label there: 1: 100/14 | 2: 25/-"
    assert latents.digits_text([[None, 1.0], [1.0, 0.12]], None) == "1: 100/12"  # trained without chunk labels

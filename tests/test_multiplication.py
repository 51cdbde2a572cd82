"""data/multiplication.py: iCoT's rule reproduces every line of iCoT's public files from their operands; this
project's formats on a hand-worked example; the splits (seeded, no test pair in train or val); errors.

iCoT's files are read from the folder in COLAR_DATA, else ../shared/data beside the repository; without them the
tests that need them are skipped.
"""
import glob
import os
import random

import pytest
from conftest import ROOT

from common import UserError
from data.format import DataError, answers_match, format_line, read_split
from data.multiplication import MultConfig, draw_pairs, example, icot_line, main, parse_icot_line

SHARED = os.environ.get("COLAR_DATA") or os.path.join(ROOT, "..", "shared", "data")
FILES = sorted(glob.glob(os.path.join(SHARED, "mult_*x*", "*.txt")))
needs_files = pytest.mark.skipif(not FILES, reason=f"iCoT's multiplication files are not in {SHARED}")

# 2365 x 4347 = 10280655, worked by hand, digits least-significant first:
#   2365 x 7        =    16555 -> 5 5 5 6 1          (5 digits: N + 1)
#   2365 x 4 x 10   =    94600 -> 0 0 6 4 9 0        (6 digits), running sum 111155 -> 5 5 1 1 1 1
#   2365 x 3 x 100  =   709500 -> 0 0 5 9 0 7 0      (7 digits), running sum 820655 -> 5 5 6 0 2 8 0
#   2365 x 4 x 1000 =  9460000 -> 0 0 0 0 6 4 9 0    (8 digits), the product 10280655 -> 5 5 6 0 8 2 0 1
HAND = ("5 6 3 2 * 7 4 3 4||5 5 5 6 1 + 0 0 6 4 9 0 ( 5 5 1 1 1 1 ) + 0 0 5 9 0 7 0 ( 5 5 6 0 2 8 0 ) + "
        "0 0 0 0 6 4 9 0 #### 5 5 6 0 8 2 0 1")


def test_icot_line_hand_worked():
    assert icot_line(2365, 4347, 4) == HAND
    assert parse_icot_line(HAND) == (2365, 4347, 4)
    # 2 digits: no running sum is written (only after the second and later partial products, never the last)
    assert icot_line(12, 34, 2) == "2 1 * 4 3||8 4 0 + 0 6 3 0 #### 8 0 4 0"   # 12 x 4 = 48, 12 x 30 = 360, 408


@needs_files
def test_every_line_of_icots_files_is_reproduced_from_its_operands():
    sizes = set()
    for path in FILES:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        for line in lines:
            a, b, n = parse_icot_line(line, path)  # it re-writes the line with icot_line and compares
            assert icot_line(a, b, n) == line and 10 ** (n - 1) <= min(a, b) and max(a, b) < 10 ** n
        sizes.add(n)
    assert {4, 5} <= sizes and len(FILES) >= 4


def test_formats_hand_worked():
    q, steps, answer = example(2365, 4347, 4, "product")
    assert (q, answer) == ("5632*7434", "5 5 6 0 8 2 0 1")
    assert steps == ["55561", "006490=551111", "0059070=5560280", "00006490=55608201"]
    assert example(2365, 4347, 4, "icot")[1] == ["55561", "006490=551111", "0059070=5560280", "00006490"]
    assert example(2365, 4347, 4, "sums")[1] == ["55561", "551111", "5560280", "55608201"]
    # 006490 / 551111 -> 05 05 61 41 91 01; 0059070 / 5560280 -> 05 05 56 90 02 78 00; 00006490 / 55608201 -> ...
    assert example(2365, 4347, 4, "interleaved")[1] == ["55561", "050561419101", "05055690027800",
                                                        "0505060068429001"]
    assert format_line(q, steps, answer) == ("5632*7434||<<55561>> <<006490=551111>> <<0059070=5560280>> "
                                             "<<00006490=55608201>> #### 5 5 6 0 8 2 0 1")
    # columns: place g of 55561, 006490, 0059070, 00006490, then the product's digit at place g - 1 (column sums
    # 5, 5, 16, 19 + 1, 16 + 2, ... give 5 5 6 0 8 ...)
    assert example(2365, 4347, 4, "columns")[1] == ["5000", "50005", "56505", "64906", "19060", "00748", "00092",
                                                    "00000", "00001"]


def test_columns_hold_the_partial_products_and_the_product():
    rng = random.Random(0)
    for n in (3, 4, 5):
        for _ in range(50):
            a, b = rng.randrange(10 ** (n - 1), 10 ** n), rng.randrange(10 ** (n - 1), 10 ** n)
            steps = example(a, b, n, "columns")[1]
            assert len(steps) == 2 * n + 1 and len(steps[0]) == n and all(len(s) == n + 1 for s in steps[1:])
            for k in range(n):  # stream k, read down the columns, is a x (digit k of b) x 10^k
                assert int("".join(s[k] for s in steps)[::-1]) == a * (b // 10 ** k % 10) * 10 ** k
            assert int("".join(s[n] for s in steps[1:])[::-1]) == a * b


def test_answers_compare_digit_for_digit():
    # reversed digits compared as numbers would take 0012 (2100) for 012 (210); spaced, they are strings
    assert not answers_match("0 1 2", "0 0 1 2") and answers_match("0 0 1 2", " 0 0 1 2 ")


def test_draw_pairs_avoids_taken_pairs():
    taken = {(a, b) for a in range(10, 100) for b in range(10, 100) if (a + b) % 3}  # two thirds of all pairs
    before = set(taken)
    pairs = draw_pairs(random.Random(0), 2, 500, taken)
    assert len(set(pairs)) == 500 and not set(pairs) & before and set(pairs) <= taken
    assert all(10 <= a < 100 and 10 <= b < 100 for a, b in pairs)
    with pytest.raises(UserError, match="fewer than"):
        draw_pairs(random.Random(0), 1, 82, set())  # 9 x 9 = 81 pairs of one-digit numbers


def write_test_file(path, pairs, n=3):
    path.write_text("".join(icot_line(a, b, n) + "\n" for a, b in pairs))
    return str(path)


def test_main_writes_the_splits(tmp_path):
    test_pairs = [(100 + i, 999 - i) for i in range(50)]
    test_file = write_test_file(tmp_path / "test_bigbench.txt", test_pairs)
    cfg = MultConfig(digits=3, test_file=test_file, n_train=300, n_val=20, out=str(tmp_path / "a"))
    meta = main(cfg)
    assert meta["counts"] == {"train": 300, "val": 20, "test": 50}
    splits = {s: read_split(str(tmp_path / "a" / f"{s}.txt")) for s in ("train", "val", "test")}
    operands = {s: [tuple(int(x[::-1]) for x in q.split("*")) for q, _, _ in ex] for s, ex in splits.items()}
    assert operands["test"] == test_pairs  # the public file's problems, in its order
    assert not set(operands["train"]) & set(test_pairs) and not set(operands["val"]) & set(test_pairs)
    assert not set(operands["train"]) & set(operands["val"]) and len(set(operands["train"])) == 300
    for (a, b), ex in zip(operands["train"], splits["train"]):
        assert ex == example(a, b, 3, "interleaved") and a * b == int(ex[2].replace(" ", "")[::-1])
    main(MultConfig(**{**vars(cfg), "out": str(tmp_path / "b")}))  # the same seed: the same files
    for s in ("train", "val", "test"):
        assert (tmp_path / "a" / f"{s}.txt").read_text() == (tmp_path / "b" / f"{s}.txt").read_text()


def test_main_errors(tmp_path, monkeypatch):
    good = write_test_file(tmp_path / "t.txt", [(123, 456)])
    with pytest.raises(UserError, match="does not hold 4x4 problems"):
        main(MultConfig(digits=4, test_file=good, out=str(tmp_path / "o")))
    bad = tmp_path / "bad.txt"
    bad.write_text(icot_line(123, 456, 3) + "\n" + icot_line(123, 456, 3).replace("####", "#### 1") + "\n")
    with pytest.raises(DataError, match=r"bad.txt:2: not the line iCoT's rule gives for 123 x 456"):
        main(MultConfig(digits=3, test_file=str(bad), out=str(tmp_path / "o")))
    bad.write_text("1 2 3 * 4 5 6 7||x #### 1\n")  # a second operand longer than the first: a ValueError inside
    with pytest.raises(DataError, match=r"bad.txt:1: not a line of iCoT's multiplication files"):
        main(MultConfig(digits=3, test_file=str(bad), out=str(tmp_path / "o")))
    bad.write_bytes(b"\xff\xfe 1 2 3\n")  # not UTF-8
    with pytest.raises(DataError, match=r"bad.txt: not UTF-8 text"):
        main(MultConfig(digits=3, test_file=str(bad), out=str(tmp_path / "o")))
    with pytest.raises(UserError, match="--format must be one of icot, product, sums, interleaved, columns"):
        main(MultConfig(format="chain", test_file=good, out=str(tmp_path / "o")))
    with pytest.raises(UserError, match="is not a file"):
        main(MultConfig(digits=3, test_file=str(tmp_path), out=str(tmp_path / "o")))
    monkeypatch.setenv("COLAR_DATA", str(tmp_path / "nowhere"))  # and no network: the download fails, one line
    monkeypatch.setattr("urllib.request.urlretrieve", lambda *a: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(UserError, match="downloading .*test_bigbench.txt failed .*give --test_file"):
        main(MultConfig(digits=3, out=str(tmp_path / "o")))


@needs_files
def test_the_4x4_data_from_icots_test_file(tmp_path):
    test_file = os.path.join(SHARED, "mult_4x4", "test_bigbench.txt")
    main(MultConfig(digits=4, test_file=test_file, n_train=2000, n_val=100, out=str(tmp_path / "m")))
    test = read_split(str(tmp_path / "m" / "test.txt"))
    with open(test_file) as f:
        icot = [parse_icot_line(line) for line in f]
    assert len(test) == 1000 and all(ex == example(a, b, 4) for ex, (a, b, _) in zip(test, icot))
    assert len(test[0][1]) == 4 and all(len(ex[2].split()) == 8 for ex in test)


def test_lag_moves_each_sum_digit_later():
    from data.multiplication import interleave
    # 006490 + 55561 = 551111: lag 1 puts s[i] after p[i + 1]; lag 0 is the interleaved chain itself
    assert interleave("006490", "551111", 1) == "0" + "05" + "65" + "41" + "91" + "01" + "1"
    assert interleave("006490", "551111", 2) == "0" + "0" + "65" + "45" + "91" + "01" + "1" + "1"
    assert example(2365, 4347, 4, "interleaved", 0) == example(2365, 4347, 4, "interleaved")
    rng = random.Random(1)
    for _ in range(200):  # each sum digit s[j] sorts as if it stood at place j + lag, after the digit p there
        a, b = rng.randint(1000, 9999), rng.randint(1000, 9999)
        for lag in (1, 2, 3):
            for plain, lagged in zip(example(a, b, 4)[1][1:], example(a, b, 4, "interleaved", lag)[1][1:]):
                slots = sorted([(i, 0, plain[2 * i]) for i in range(len(plain) // 2)]
                               + [(j + lag, 1, plain[2 * j + 1]) for j in range(len(plain) // 2)])
                assert lagged == "".join(d for _, _, d in slots)


def test_lag_is_for_the_interleaved_chain(tmp_path):
    good = write_test_file(tmp_path / "t.txt", [(123, 456)])
    with pytest.raises(UserError, match="--lag is for the interleaved chain"):
        main(MultConfig(digits=3, test_file=good, format="product", lag=1, out=str(tmp_path / "o")))
    with pytest.raises(UserError, match="lag"):
        main(MultConfig(digits=3, test_file=good, lag=-1, out=str(tmp_path / "o")))
    meta = main(MultConfig(digits=3, test_file=good, lag=2, n_train=10, n_val=2, out=str(tmp_path / "l")))
    assert meta["config"]["lag"] == 2
    q, steps, _ = read_split(str(tmp_path / "l" / "test.txt"))[0]
    assert steps == list(example(123, 456, 3, "interleaved", 2)[1])


def test_pad_first_moves_every_chunk_boundary():
    from tokenizer import Tokenizer
    from data.format import chain_text
    # 55561 with two more high zeros; the later steps unchanged
    steps = example(2365, 4347, 4, "interleaved", pad_first=2)[1]
    assert steps == ["5556100", "050561419101", "05055690027800", "0505060068429001"]
    assert example(2365, 4347, 4, "product", pad_first=1)[1][0] == "555610"
    tok = Tokenizer("place")
    plain = tok.encode(chain_text(example(2365, 4347, 4)[1]))
    padded = tok.encode(chain_text(steps))
    assert len(padded) == len(plain) + 2 and padded[-18:] == plain[-18:]  # the last step: << 16 digits >>
    # the last step starts at token 40 (7 + 1 + 14 + 1 + 16 + 1): 48, 49, 50 hold prod[3] p3[4] prod[4], one chunk at
    # c = 3 (48 = 3 x 16); two tokens on, p3[4] prod[4] p3[5] (51, 52, 53) are one
    last = "0505060068429001"  # p3[i] = last[2i], prod[i] = last[2i + 1]; token 41 + i unpadded, 43 + i padded
    chunks = lambda ids, c: [tok.decode(ids[k:k + c]) for k in range(0, len(ids), c)]  # noqa: E731
    assert chunks(plain, 3)[16] == last[7:10] == "068"    # tokens 48-50: prod[3] p3[4] prod[4]
    assert chunks(padded, 3)[17] == last[8:11] == "684"   # tokens 51-53: p3[4] prod[4] p3[5]
    assert chunks(padded, 3)[:3] == ["<<55", "561", "00>>"]
    # at c = 2 an even pad keeps every pair: the last step's chunks (tokens 40-57, 42-59) are the same
    assert chunks(plain, 2)[20:29] == chunks(padded, 2)[21:30] and chunks(plain, 2)[20] == "<<0"


def test_pad_first_is_for_chains_of_partial_products(tmp_path):
    good = write_test_file(tmp_path / "t.txt", [(123, 456)])
    with pytest.raises(UserError, match="--pad_first is for chains of partial products"):
        main(MultConfig(digits=3, test_file=good, format="columns", pad_first=1, out=str(tmp_path / "o")))
    meta = main(MultConfig(digits=3, test_file=good, pad_first=1, n_train=10, n_val=2, out=str(tmp_path / "p")))
    assert meta["config"]["pad_first"] == 1
    assert read_split(str(tmp_path / "p" / "test.txt"))[0][1][0] == "83700"  # 123 x 6: 8370, then 0

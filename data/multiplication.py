"""
iCoT's multi-digit multiplication (Deng et al. 2023, "Implicit Chain of Thought Reasoning via Knowledge Distillation"),
the benchmark on which small models trained from scratch are measured, written as GSM8K-Aug lines.

iCoT's rule. Both operands are drawn uniformly from the numbers of exactly N digits. Every number is written digit by
digit, least-significant digit first, separated by spaces. The chain holds the N partial products (the multiplicand
times one digit of the multiplier, shifted: N + 1 + k digits for the k-th, zero-padded), each from the second on
followed by the running sum in parentheses (N + 1 + k digits), except the last; the answer is the product (2N digits):

    5 6 3 2 * 7 4 3 4||5 5 5 6 1 + 0 0 6 4 9 0 ( 5 5 1 1 1 1 ) + 0 0 5 9 0 7 0 ( 5 5 6 0 2 8 0 ) + 0 0 0 0 6 4 9 0 ####
    5 5 6 0 8 2 0 1                                                    (2365 x 4347 = 10280655)

`icot_line` writes that line exactly (tests/test_multiplication.py checks it against every line of iCoT's public
files). This project's line keeps the numbers and their digit order but drops the spaces inside a number (one
character, one token with the char tokenizer) and makes each partial product a step; --format chooses the steps:

    icot     <<55561>> <<006490=551111>> <<0059070=5560280>> <<00006490>>              iCoT's chain
    product  <<55561>> <<006490=551111>> <<0059070=5560280>> <<00006490=55608201>>     ... ending with the product
    sums     <<55561>> <<551111>> <<5560280>> <<55608201>>                              the running sums only
    interleaved  <<55561>> <<050561419101>> <<05055690027800>> <<0505060068429001>>    place by place
    columns  <<5000>> <<50005>> <<56505>> <<64906>> <<19060>> <<00748>> <<00092>> <<00000>> <<00001>>

--format interleaved writes, place by place, a partial product's digit and the running sum's digit at that place
(partial product 006490 and sum 551111 give 05 05 61 41 91 01): each pair of tokens advances the sum by one place,
so every latent of a compressed chain moves on by the same number of places, and with "place" tokens (a digit's
token tells its position in the run) sum pooling keeps which digit is which. --lag L writes each sum digit L places
later, after the partial product's digit L places up (lag 1: 0 05 65 41 91 01 1), so that away from a step's two
ends a chunk of up to 2L + 1 tokens never holds a sum digit together with the partial-product digit it adds; only the
carries between its sum digits stay inside a chunk. The tokens are the same, in another order.

--pad_first K writes the first partial product with K more high zeros (55561 becomes 5556100 for K = 2), which moves
every later token K places on and so every chunk boundary at a speed c that does not divide K: at c = 3 the last
step's chunks `prod[3] p3[4] prod[4]` become `p3[4] prod[4] p3[5]` for K = 2. At c = 2 an even K keeps every pair.
Measured at c = 3 (EXPERIMENTS.md, 2026-12-01): K = 2 and the plain chain gave nearly the same accuracy.

--format columns writes long multiplication column by column: step g holds digit g of each shifted partial product
(the N numbers above, read down the columns) and then digit g - 1 of the product, which the column before decides (5 +
6 + 5 + 0 plus the carry 0 at place 2 gives the 6 that ends step 3). No digit depends on another of its own step or of
the next: a partial product's digit needs only the question (its carry comes from the multiplicand's lower digits),
the product's digit the column before, at least N + 3 tokens earlier, so a chunk of up to N + 3 tokens never holds a
digit and one it needs, whatever the speed, and with "place" tokens each of its digits is a different token.

The question is `5632*7434`; the answer keeps iCoT's spaced digits, `5 5 6 0 8 2 0 1`, so that it is compared as a
string, digit for digit (as a number, a reversed `0012` would equal `012`).

The test split is iCoT's public test_bigbench.txt (1,000 problems), read from --test_file, from
$COLAR_DATA/mult_NxN/test_bigbench.txt, or downloaded once from iCoT's repository; train and validation are drawn from
--seed by the same rule, never with an operand pair of the test file (nor one of each other). A pair reversed is
another problem (the same product, another chain) and may be drawn: 2 of the 200,000 4x4 training problems (seed
1234) are test pairs reversed, 4 validation pairs reversed.

    python -m data.multiplication --digits 4                      # data/mult4: train 200,000, val 1,000, test 1,000
    python -m data.multiplication --digits 5 --format product     # data/mult5_product
    python -m data.multiplication --digits 4 --lag 2              # data/mult4_lag2
    python -m data.multiplication --digits 4 --pad_first 2        # data/mult4_pad2
"""
import json
import os
import random
import sys
from dataclasses import asdict, dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import UserError, check_flags, check_folder, parse_config, run_cli  # noqa: E402
from data.format import SPLIT_FILES, DataError, format_line, read_lines, write_split  # noqa: E402
from data.gsm8k import fetch  # noqa: E402

FORMATS = ("icot", "product", "sums", "interleaved", "columns")
TEST_URL = ("https://raw.githubusercontent.com/da03/Internalize_CoT_Step_by_Step/main/data/{n}_by_{n}_mult/"
            "test_bigbench.txt")


def digits(value, width):
    """`value`'s digits, least-significant first, zero-padded to `width`: digits(120, 5) = '02100'."""
    s = str(value)[::-1]
    if len(s) > width:
        raise ValueError(f"{value} has more than {width} digits")
    return s + "0" * (width - len(s))


def partial_products(a, b, n):
    """[(partial product k, running sum after it)] for k = 0..n-1, as numbers: a x (digit k of b) x 10^k."""
    out, total = [], 0
    for k in range(n):
        p = a * (b // 10 ** k % 10) * 10 ** k
        total += p
        out.append((p, total))
    return out


def icot_line(a, b, n):
    """The line iCoT's files hold for a x b (n-digit operands)."""
    spaced = lambda value, width: " ".join(digits(value, width))  # noqa: E731
    parts = []
    for k, (p, total) in enumerate(partial_products(a, b, n)):
        parts.append(spaced(p, n + 1 + k) + (f" ( {spaced(total, n + 1 + k)} )" if 0 < k < n - 1 else ""))
    return f"{spaced(a, n)} * {spaced(b, n)}||{' + '.join(parts)} #### {spaced(a * b, 2 * n)}"


def parse_icot_line(line, where="<line>"):
    """(a, b, n) from a line of iCoT's files; the rest of the line must be what icot_line writes."""
    try:
        left, right = line.split("||")[0].split(" * ")
        n = len(left.split())
        a, b = int("".join(left.split())[::-1]), int("".join(right.split())[::-1])
        rewritten = icot_line(a, b, n)  # a second operand longer than the first has no line of n digits
    except ValueError:
        raise DataError(f"{where}: not a line of iCoT's multiplication files: {line[:80]!r}") from None
    if rewritten != line.rstrip("\n"):
        raise DataError(f"{where}: not the line iCoT's rule gives for {a} x {b}: {line[:80]!r}")
    return a, b, n


def interleave(p, s, lag=0):
    """Two digit strings of one width place by place, each digit of s `lag` places after p's digit at its place:
    interleave('006490', '551111', 1) = '0' '05' '65' '41' '91' '01' '1'."""
    return "".join(p[i:i + 1] + (s[i - lag] if i >= lag else "") for i in range(len(p) + lag))


def example(a, b, n, fmt="interleaved", lag=0, pad_first=0):
    """(question, steps, answer) in this project's line format, with --format's steps (see the top of the file)."""
    prod = digits(a * b, 2 * n)
    question, answer = f"{digits(a, n)}*{digits(b, n)}", " ".join(prod)
    if fmt == "columns":  # column g: digit g of every shifted partial product, then digit g - 1 of the product
        ps = [digits(p, 2 * n + 1) for p, _ in partial_products(a, b, n)]
        return question, ["".join(p[g] for p in ps) + (prod[g - 1] if g else "") for g in range(2 * n + 1)], answer
    steps = []
    for k, (p, total) in enumerate(partial_products(a, b, n)):
        w = n + 1 + k + (pad_first if k == 0 else 0)
        if fmt == "sums":
            steps.append(digits(total, w if k < n - 1 else 2 * n))
        elif fmt == "interleaved" and k > 0:  # the last partial product has 2n digits, as the product
            steps.append(interleave(digits(p, w), digits(total, w), lag))
        elif k == 0 or (fmt == "icot" and k == n - 1):
            steps.append(digits(p, w))
        else:
            steps.append(f"{digits(p, w)}={digits(total, w if k < n - 1 else 2 * n)}")
    return question, steps, answer


def draw_pairs(rng, n, count, taken):
    """`count` distinct operand pairs of n-digit numbers, uniformly drawn, none in `taken` (which grows by them)."""
    lo, hi, out = 10 ** (n - 1), 10 ** n - 1, []
    if count > (hi - lo + 1) ** 2 - len(taken):
        raise UserError(f"there are fewer than {count:,} new {n}-digit operand pairs")
    while len(out) < count:
        pair = (rng.randint(lo, hi), rng.randint(lo, hi))
        if pair not in taken:
            taken.add(pair)
            out.append(pair)
    return out


def default_out(n, fmt, lag=0, pad_first=0):
    """Where --out defaults to: data/mult{n} for the default format, data/mult{n}_{format} for another, then _lag{L}
    for --lag L and _pad{K} for --pad_first K."""
    return (f"data/mult{n}" + ("" if fmt == MultConfig.format else f"_{fmt}") + (f"_lag{lag}" if lag else "")
            + (f"_pad{pad_first}" if pad_first else ""))


@dataclass
class MultConfig:
    digits: int = 4             # N: N-digit times N-digit (iCoT's test files exist for 4, 5, 7, 9, 11)
    format: str = "interleaved" # the chain's steps: icot, product, sums, interleaved or columns (see the top)
    lag: int = 0                # interleaved: each running-sum digit written this many places later (see the top)
    pad_first: int = 0          # the first partial product written with this many more high zeros (see the top)
    out: str = ""               # output folder ("": data/mult{N}, with _{format} unless the format is interleaved)
    test_file: str = ""         # iCoT's test_bigbench.txt ("": $COLAR_DATA/mult_NxN/, else downloaded into out/raw)
    seed: int = 1234            # train and val follow from it
    n_train: int = 200000       # training problems
    n_val: int = 1000           # validation problems (model selection)


def main(cfg):
    check_flags(cfg, dict(format=FORMATS), positive=("digits", "n_val"), nonnegative=("n_train", "lag", "pad_first"))
    if cfg.lag and cfg.format != "interleaved":
        raise UserError(f"--lag is for the interleaved chain, not --format {cfg.format}")
    if cfg.pad_first and cfg.format == "columns":
        raise UserError("--pad_first is for chains of partial products, not --format columns")
    n = cfg.digits
    out = cfg.out or default_out(n, cfg.format, cfg.lag, cfg.pad_first)
    check_folder(out, "--out", SPLIT_FILES)
    rel = f"mult_{n}x{n}/test_bigbench.txt"
    if cfg.test_file:
        if not os.path.isfile(cfg.test_file):
            raise UserError(f"--test_file {cfg.test_file} is not a file")
        path = cfg.test_file
    else:
        path = fetch(os.environ.get("COLAR_DATA", ""), rel, out, TEST_URL.format(n=n),
                     fix=f"give --test_file (or COLAR_DATA, a folder that holds {rel})")
    test = [parse_icot_line(line, f"{path}:{i}") for i, line in enumerate(read_lines(path), 1) if line.strip()]
    if not test or any(m != n for _, _, m in test):
        raise UserError(f"{path} does not hold {n}x{n} problems (--digits {n})")
    taken = {(a, b) for a, b, _ in test}
    rng = random.Random(cfg.seed)
    val = draw_pairs(rng, n, cfg.n_val, taken)
    train = draw_pairs(rng, n, cfg.n_train, taken)
    os.makedirs(out, exist_ok=True)
    for name, pairs in (("train", train), ("val", val), ("test", [(a, b) for a, b, _ in test])):
        write_split(os.path.join(out, f"{name}.txt"), [example(a, b, n, cfg.format, cfg.lag, cfg.pad_first)
                                                             for a, b in pairs])
    meta = {"config": asdict(cfg), "test_file": path, "counts": {"train": len(train), "val": len(val),
                                                                  "test": len(test)}}
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(f"wrote {out}: train {len(train):,}, val {len(val):,}, test {len(test):,} (from {path})")
    print("example:", format_line(*example(*test[0][:2], n, cfg.format, cfg.lag, cfg.pad_first)))
    return meta


if __name__ == "__main__":
    run_cli(main, parse_config(MultConfig))

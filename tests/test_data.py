"""Tests of the data code: the GSM8K-Aug line format (data/format.py), the GSM8K conversion (data/gsm8k.py) on tiny
hand-made files and on the offline copies of GSM8K (the folder in COLAR_DATA, else ../shared/data beside the
repository; those tests are skipped without it), and the synthetic arithmetic task (data/synthetic.py).

Run: .venv/bin/python -m pytest tests
"""
import json
import os
import re
import shutil

import pytest

import data.gsm8k
from common import UserError, run_cli
from data.format import DataError, answers_match, format_line, parse_line, read_split, write_split
from data.gsm8k import FILES, GSM8KConfig, read_gsm8k_jsonl
from data.gsm8k import main as gsm8k_main
from data.synthetic import SynthConfig, generate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("COLAR_DATA") or os.path.join(ROOT, "..", "shared", "data")


# --- the line format -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("line,expected", [
    ("3+4*2||<<3+4=7>> <<7*2=14>> #### 14\n", ("3+4*2", ["3+4=7", "7*2=14"], "14")),
    ("q|| #### 6", ("q", [], "6")),
    ("q||#### 6", ("q", [], "6")),
    ("How much?||<<5*425=2125>> #### 2,125", ("How much?", ["5*425=2125"], "2125")),
    ("How much? ||<<36/2=18>>####18.0", ("How much?", ["36/2=18"], "18")),
    ("a || b||<< 1+1=2 >>  #### $5 ", ("a || b", ["1+1=2"], "5")),
    ("neg||<<3-5=-2>> #### -2", ("neg", ["3-5=-2"], "-2")),
])
def test_parse_line_good(line, expected):
    assert parse_line(line) == expected


@pytest.mark.parametrize("line,what", [
    ("question <<1+1=2>> #### 2", "'||'"),
    ("question||<<1+1=2>> 2", "'####'"),
    ("question||<<1+1=2>> so 2 #### 2", "outside"),
    ("question||<<1+1=2>> #### ", "empty answer"),
    ("question||<<1+1=2>> #### $ , ", "empty answer"),
    ("  ||<<1+1=2>> #### 2", "empty question"),
])
def test_parse_line_malformed(line, what):
    with pytest.raises(DataError) as e:
        parse_line(line, "train.txt:17")
    msg = str(e.value)
    assert msg.startswith("train.txt:17:")
    assert what in msg
    assert isinstance(e.value, UserError)  # so that run_cli prints it as one line


def test_format_line_round_trips():
    ex = ("Janet’s ducks lay 16 eggs.", ["16-3-4=9", "9*2=18"], "18")
    assert format_line(*ex) == "Janet’s ducks lay 16 eggs.||<<16-3-4=9>> <<9*2=18>> #### 18"
    assert parse_line(format_line(*ex)) == ex
    assert parse_line(format_line("q", [], "6")) == ("q", [], "6")


def test_read_split_names_file_and_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("a||<<1+1=2>> #### 2\nb|| #### 3\nc||<<1+1=2>> 2\nd|| #### 4\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        read_split(str(path))
    assert f"{path}:3" in str(e.value)
    assert f"{path}:2" not in str(e.value)
    with pytest.raises(DataError, match="not found"):
        read_split(str(tmp_path / "missing.txt"))


def test_write_split_is_whole_or_not_at_all(tmp_path, monkeypatch):
    """A write that fails half-way leaves the file as it was (an interrupted data stage leaves no split cut short,
    which a resumed demo would take for a finished one)."""
    import data.format
    path = str(tmp_path / "train.txt")
    write_split(path, [("a", ["1+1=2"], "2")])
    real, written = data.format.format_line, []

    def full_disk_at_the_second_line(*a):
        written.append(a)
        if len(written) == 2:
            raise OSError("No space left on device")
        return real(*a)
    monkeypatch.setattr(data.format, "format_line", full_disk_at_the_second_line)
    with pytest.raises(OSError):
        write_split(path, [("b", [], "3"), ("c", [], "4")])
    assert read_split(path) == [("a", ["1+1=2"], "2")]


def test_write_then_read_split(tmp_path):
    examples = [("a b", ["1+1=2"], "2"), ("c", [], "7"), ("Janet’s", ["2*3=6", "6-1=5"], "5")]
    path = str(tmp_path / "x.txt")
    write_split(path, examples)
    with open(path, "a", encoding="utf-8") as f:
        f.write("\n")  # blank lines are skipped
    assert read_split(path) == examples


@pytest.mark.parametrize("p,r,same", [
    ("18", "18.0", True), ("1,000", "1000", True), ("0.5", ".5", True), ("abc", "abc", True),
    ("$5", "5", True), (" 7 ", "7", True), ("-3", "-3.00", True),
    ("17", "18", False), ("", "0", False), ("abc", "abd", False), ("0.5", "0.6", False), ("nan", "nan", False),
    ("1450001", "1,450,000", False), ("12345678901234567891", "12345678901234567890", False), ("inf", "inf", False),
])
def test_answers_match(p, r, same):
    assert answers_match(p, r) is same
    assert answers_match(r, p) is same


# --- the real shared files -------------------------------------------------------------------------------------
def shared(rel):
    if not os.path.isdir(SHARED):
        pytest.skip(f"offline GSM8K folder {SHARED} is missing (set COLAR_DATA to where it is)")
    return os.path.join(SHARED, rel)


def count_lines(path):
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def test_shared_file_counts():
    assert count_lines(shared("gsm8k/train.jsonl")) == 7473
    assert count_lines(shared("gsm8k/test.jsonl")) == 1319
    assert len(read_split(shared("gsm8k_aug/valid.txt"))) == 500
    assert len(read_split(shared("gsm8k_aug/test.txt"))) == 1319
    assert len(read_gsm8k_jsonl(shared("gsm8k/train.jsonl"))) == 7473


def test_gsm8k_test_jsonl_converts_to_gsm8k_aug_test():
    converted = read_gsm8k_jsonl(shared("gsm8k/test.jsonl"))
    aug = read_split(shared("gsm8k_aug/test.txt"))
    assert len(converted) == len(aug) == 1319
    for i, ((q1, s1, a1), (q2, s2, a2)) in enumerate(zip(converted, aug)):
        assert (s1, a1) == (s2, a2), f"example {i + 1}"
        assert " ".join(q1.split()) == " ".join(q2.split()), f"example {i + 1}"
    assert aug[0] == ("Janet’s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes "
                      "muffins for her friends every day with four. She sells the remainder at the farmers' market "
                      "daily for $2 per fresh duck egg. How much in dollars does she make every day at the farmers' "
                      "market?", ["16-3-4=9", "9*2=18"], "18")


@pytest.fixture(scope="module")
def gsm8k_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("gsm8k")
    counts = gsm8k_main(GSM8KConfig(source=shared(""), out=str(out)))
    return out, counts


def test_gsm8k_main_writes_val_and_test(gsm8k_out):
    out, counts = gsm8k_out
    val, test = read_split(str(out / "val.txt")), read_split(str(out / "test.txt"))
    assert (counts["val"], counts["test"]) == (len(val), len(test)) == (500, 1319)
    assert val == read_split(shared("gsm8k_aug/valid.txt"))
    assert test == read_split(shared("gsm8k_aug/test.txt"))
    train = read_split(str(out / "train.txt"))
    assert counts["train"] == len(train)
    assert all(a for _, _, a in train)


def test_gsm8k_main_holds_val_out_of_train(gsm8k_out):
    out, counts = gsm8k_out
    train = read_split(str(out / "train.txt"))
    val = read_split(str(out / "val.txt"))
    norm = lambda q: " ".join(q.split())  # noqa: E731
    leaked = {norm(q) for q, _, _ in val} & {norm(q) for q, _, _ in train}
    assert not leaked, f"{len(leaked)} val questions are in train"
    assert counts["train"] == len(train) == 6973


# --- the synthetic task ----------------------------------------------------------------------------------------
def small(**kw):
    base = dict(n_train=200, n_val=20, n_test=20, seed=3)
    base.update(kw)
    return SynthConfig(**base)


def reevaluate(question, mod):
    """Independent check: parse `start op b op b ...` and apply the operations left to right."""
    m = re.fullmatch(r"(\d+)((?:[-+*]\d+)+)", question)
    assert m, question
    value = int(m.group(1))
    steps = []
    for op, b in re.findall(r"([-+*])(\d+)", m.group(2)):
        b = int(b)
        new = value + b if op == "+" else value - b if op == "-" else value * b
        if mod:
            new %= mod
        steps.append(f"{value}{op}{b}={new}")
        value = new
    return steps, str(value)


def test_synthetic_is_deterministic_per_seed():
    a, b, c = generate(small(seed=5)), generate(small(seed=5)), generate(small(seed=6))
    assert a == b
    assert a != c
    assert {k: len(v) for k, v in a.items()} == {"test": 20, "val": 20, "train": 200}


def test_synthetic_questions_unique_and_chains_correct():
    cfg = small()
    splits = generate(cfg)
    questions = [q for ex in splits.values() for q, _, _ in ex]
    assert len(questions) == len(set(questions)) == 240
    for q, steps, answer in (ex for v in splits.values() for ex in v):
        ref_steps, ref_answer = reevaluate(q, 10)
        assert steps == ref_steps and answer == ref_answer, q
        assert cfg.steps_min <= len(steps) <= cfg.steps_max
        assert 0 <= int(q.split("+")[0].split("-")[0].split("*")[0]) <= cfg.start_max
        assert parse_line(format_line(q, steps, answer)) == (q, steps, answer)
    # the hand-worked example of the module docstring
    assert reevaluate("0-5-4+7+6-7*9*3", 10) == (
        ["0-5=5", "5-4=1", "1+7=8", "8+6=4", "4-7=7", "7*9=3", "3*3=9"], "9")


def test_synthetic_questions_unique_across_splits_in_a_small_task():
    # 10 starts x 9 operands = 90 possible questions for 60 examples: repeats would be drawn often
    cfg = small(n_train=40, n_val=10, n_test=10, steps_min=1, steps_max=1, ops="+")
    splits = generate(cfg)
    questions = [q for ex in splits.values() for q, _, _ in ex]
    assert len(questions) == len(set(questions)) == 60


def test_synthetic_step_counts_follow_config():
    splits = generate(small(steps_min=2, steps_max=3, ops="+"))
    lengths = {len(s) for ex in splits.values() for _, s, _ in ex}
    assert lengths == {2, 3}
    assert all("-" not in q and "*" not in q for ex in splits.values() for q, _, _ in ex)


@pytest.mark.parametrize("kw", [dict(ops="/"), dict(ops=""), dict(ops="+/"), dict(steps_min=5, steps_max=4),
                                dict(steps_min=0), dict(operand_min=5, operand_max=2), dict(mod=-1),
                                dict(check_p=-0.1), dict(check_p=1.5)])
def test_synthetic_bad_config_raises_user_error(kw):
    with pytest.raises(UserError):
        generate(small(**kw))


def test_synthetic_too_few_distinct_questions_raises_user_error():
    with pytest.raises(UserError, match="too few distinct"):
        generate(small(steps_min=1, steps_max=1, ops="+", start_max=1, operand_min=1, operand_max=1))


def test_synthetic_mod0_keeps_results_in_range():
    cfg = small(mod=0, operand_max=30, max_value=60, steps_min=3, steps_max=5)
    splits = generate(cfg)
    grew = False
    for q, steps, answer in (ex for v in splits.values() for ex in v):
        ref_steps, ref_answer = reevaluate(q, 0)
        assert steps == ref_steps and answer == ref_answer, q
        results = [int(s.split("=")[1]) for s in steps]
        assert all(0 <= r <= cfg.max_value for r in results), q
        grew |= max(results) >= 10
    assert grew  # with no modulus, results do leave 0..9


def test_synthetic_check_steps():
    plain, checked = generate(small()), generate(small(check_p=0.5))
    n_checked = 0
    for q, steps, answer in (ex for v in checked.values() for ex in v):
        ref_steps, ref_answer = reevaluate(q, 10)
        assert answer == ref_answer, q
        if steps != ref_steps:  # the only difference allowed: one closing check <<v=v>> of the answer
            assert steps == ref_steps + [f"{answer}={answer}"], q
            n_checked += 1
    assert 80 <= n_checked <= 160  # about half of 240 (binomial sd 7.7)
    # at check_p 0 nothing more is drawn: seed 3 gives the examples it gave before check_p existed
    assert plain["test"][0] == ("3*3-8*2*1-5*4+8*9", ["3*3=9", "9-8=1", "1*2=2", "2*1=2", "2-5=7", "7*4=8", "8+8=6",
                                                      "6*9=4"], "4")
    assert plain["train"][-1] == ("7+3+5+7-9+3*9", ["7+3=0", "0+5=5", "5+7=2", "2-9=3", "3+3=6", "6*9=4"], "4")
    always = generate(small(check_p=1.0))
    assert all(s[-1] == f"{a}={a}" for v in always.values() for _, s, a in v)


# --- where data/gsm8k.py finds its files: --source, COLAR_DATA, or a download into --out/raw ---------------------
def fake_source(root):
    """A folder shaped like the GSM8K source folder; of the three train questions the second is val's, the third
    test's (both held out of train)."""
    def jsonl(rows):
        return "".join(json.dumps({"question": q, "answer": f"Add: <<{e}>>{a}.\n#### {a}"}) + "\n" for q, e, a in rows)
    files = {"gsm8k/train.jsonl": jsonl([("One plus one?", "1+1=2", "2"), ("Two plus two?", "2+2=4", "4"),
                                         ("Four  times two?", "4*2=8", "8")]),
             "gsm8k_aug/valid.txt": "Two plus two?||<<2+2=4>> #### 4\n",
             "gsm8k_aug/test.txt": "Three plus three?||<<3+3=6>> #### 6\nFour times two?||<<4*2=8>> #### 8\n"}
    assert set(files) == set(FILES)
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return root


def offline(url, path):
    raise OSError("no network")


def test_gsm8k_reads_the_folder_in_colar_data(tmp_path, monkeypatch):
    monkeypatch.setattr("urllib.request.urlretrieve", offline)  # nothing may be downloaded
    monkeypatch.setenv("COLAR_DATA", str(fake_source(tmp_path / "src")))
    counts = gsm8k_main(GSM8KConfig(out=str(tmp_path / "out")))
    assert counts == {"train": 1, "val": 1, "test": 2}
    assert read_split(str(tmp_path / "out" / "train.txt")) == [("One plus one?", ["1+1=2"], "2")]
    assert not (tmp_path / "out" / "raw").exists()
    # --source wins over COLAR_DATA
    monkeypatch.setenv("COLAR_DATA", str(tmp_path / "nowhere"))
    assert gsm8k_main(GSM8KConfig(source=str(tmp_path / "src"), out=str(tmp_path / "out2"))) == counts


def test_gsm8k_downloads_missing_files_into_out_raw(tmp_path, monkeypatch):
    src = fake_source(tmp_path / "src")
    by_url = {url: src / rel for rel, url in FILES.items()}
    fetched = []

    def download(url, path):
        fetched.append(url)
        shutil.copy(by_url[url], path)
    monkeypatch.setattr("urllib.request.urlretrieve", download)
    monkeypatch.delenv("COLAR_DATA", raising=False)
    out = tmp_path / "out"
    assert gsm8k_main(GSM8KConfig(out=str(out))) == {"train": 1, "val": 1, "test": 2}
    assert sorted(fetched) == sorted(FILES.values())
    assert all((out / "raw" / rel).read_text() == (src / rel).read_text() for rel in FILES)
    gsm8k_main(GSM8KConfig(out=str(out)))  # a second run finds them there
    assert len(fetched) == len(FILES)


def test_gsm8k_offline_without_a_source_is_one_clear_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("urllib.request.urlretrieve", offline)
    monkeypatch.delenv("COLAR_DATA", raising=False)
    with pytest.raises(SystemExit) as e:
        run_cli(data.gsm8k.main, GSM8KConfig(out=str(tmp_path / "out")))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: gsm8k/train.jsonl is not in ")
    assert "downloading https://" in err and "(no network)" in err
    assert "give --source (or COLAR_DATA) a folder that holds gsm8k/train.jsonl" in err
    assert not (tmp_path / "out" / "train.txt").exists()


def test_failed_download_names_the_flag_that_gives_the_file(tmp_path, monkeypatch):
    """Offline, a missing source file points at --source, and a failed --aug_train download at --aug_train (it
    once pointed at --source, where the 385k-line file is never looked for)."""
    monkeypatch.setattr("urllib.request.urlretrieve", offline)
    with pytest.raises(UserError, match=r"--source .*nowhere is not a folder \(one that holds gsm8k/train.jsonl, "):
        gsm8k_main(GSM8KConfig(source=str(tmp_path / "nowhere"), out=str(tmp_path / "out")))  # it tried to download
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"empty.gsm8k.train\.jsonl is missing .*give --source \(or COLAR_DATA\) a "
                                        r"folder that holds gsm8k/train\.jsonl$"):
        gsm8k_main(GSM8KConfig(source=str(tmp_path / "empty"), out=str(tmp_path / "out")))
    assert not (tmp_path / "out" / "train.txt").exists()
    with pytest.raises(UserError, match=r"give --aug_train the path of GSM8K-Aug's train.txt") as e:
        gsm8k_main(GSM8KConfig(source=str(fake_source(tmp_path / "src")), aug_train="download",
                               out=str(tmp_path / "out")))
    assert "--source" not in str(e.value)


def test_gsm8k_reads_only_the_files_it_needs(tmp_path, monkeypatch):
    """With --aug_train, GSM8K's train.jsonl is never read, so offline it need not be there."""
    monkeypatch.setattr("urllib.request.urlretrieve", offline)
    src = fake_source(tmp_path / "src")
    (src / "gsm8k" / "train.jsonl").unlink()
    aug = tmp_path / "aug.txt"
    aug.write_text("Five plus five?||<<5+5=10>> #### 10\n")
    assert gsm8k_main(GSM8KConfig(source=str(src), aug_train=str(aug), out=str(tmp_path / "out"))) == \
        {"train": 1, "val": 1, "test": 2}


def test_gsm8k_aug_train_never_holds_a_val_or_test_question(tmp_path, monkeypatch, capsys):
    """GSM8K-Aug's train file is read as given; a question that is also in val or test (spacing aside) is dropped,
    as GSM8K's own train file drops val's."""
    monkeypatch.setattr("urllib.request.urlretrieve", offline)
    aug = tmp_path / "aug.txt"
    aug.write_text("Five plus five?||<<5+5=10>> #### 10\nTwo  plus two?||<<2+2=4>> #### 4\n"
                   "Four times two?||<<4*2=8>> #### 8\nSix plus six?||<<6+6=12>> #### 12\n")
    out = tmp_path / "out"
    assert gsm8k_main(GSM8KConfig(source=str(fake_source(tmp_path / "src")), aug_train=str(aug), out=str(out))) == \
        {"train": 2, "val": 1, "test": 2}
    assert [q for q, _, _ in read_split(str(out / "train.txt"))] == ["Five plus five?", "Six plus six?"]
    assert "2 held out, being val or test questions" in capsys.readouterr().out


def test_gsm8k_an_undecodable_file_is_one_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\xff\xfe{}\n")
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}: not UTF-8 text"):
        read_gsm8k_jsonl(str(path))


def test_gsm8k_a_row_whose_answer_is_not_text_is_one_line(tmp_path):
    """A number for an answer was a TypeError from inside the answer parser."""
    path = tmp_path / "train.jsonl"
    good = '{"question": "How many?", "answer": "3 <<1+2=3>>\\n#### 3"}\n'
    path.write_text(good + '{"question": "How many?", "answer": 5}\n')
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}:2: malformed line, 'question' and 'answer' must "
                                        f"be text$"):
        read_gsm8k_jsonl(str(path))
    path.write_text(good)  # the control
    assert read_gsm8k_jsonl(str(path)) == [("How many?", ["1+2=3"], "3")]


@pytest.mark.parametrize("module", ["synthetic", "gsm8k", "multiplication"])
def test_data_out_that_cannot_be_a_folder_is_refused_first(tmp_path, monkeypatch, module):
    """--out an existing file, a path through one, or a folder with a folder where a split is to go: refused before
    the sources are read or the data generated (they were tracebacks from makedirs or the write after the work)."""
    import importlib
    mod = importlib.import_module(f"data.{module}")
    cfg_cls = {"synthetic": SynthConfig, "gsm8k": GSM8KConfig, "multiplication": mod.__dict__.get("MultConfig")}[module]
    monkeypatch.setattr("urllib.request.urlretrieve", offline)
    (tmp_path / "f").write_text("")
    (tmp_path / "o" / "val.txt").mkdir(parents=True)  # written after the train file (and the work) were done
    for out, message in ((tmp_path / "f", "is a file, not a folder"), (tmp_path / "f" / "d", "cannot be made: "),
                         (tmp_path / "o", "holds a folder named val.txt, where that file is to be written")):
        with pytest.raises(UserError, match=f"^--out {re.escape(str(out))} {message}"):
            mod.main(cfg_cls(out=str(out)))
    assert os.listdir(tmp_path / "o") == ["val.txt"]

"""
GSM8K in the GSM8K-Aug format: question||<<eq>> <<eq>> ... #### answer (the chain keeps only the calculator equations).

Reads the original GSM8K jsonl files (question + natural-language answer with <<...>> annotations and `#### answer`) and
GSM8K-Aug txt files, and writes data/gsm8k/{train,val,test}.txt:
- train: GSM8K train (7,473) converted, or the ~385k GSM8K-Aug train file given with --aug_train; either minus every
  question of val or test (GSM8K train: 6,973 left);
- val:   GSM8K-Aug valid.txt (500 questions taken from GSM8K train, hence held out of train above);
- test:  GSM8K-Aug test.txt (= the 1,319 GSM8K test problems).
The source files are read from --source if given, else from the folder in the environment variable COLAR_DATA if set;
a file missing there (or everywhere, with neither) is downloaded from its public URL into --out/raw, once.

    python -m data.gsm8k                                   # downloads the three files into data/gsm8k/raw
    COLAR_DATA=/path/to/folder python -m data.gsm8k        # offline: a folder with gsm8k/ and gsm8k_aug/ in it
    python -m data.gsm8k --source /path/to/folder --aug_train /path/to/gsm8k_aug_train.txt
"""
import json
import os
import sys
import urllib.request
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import UserError, check_folder, parse_config, run_cli  # noqa: E402
from data.format import (STEP, SPLIT_FILES, DataError, normalise_answer, read_lines, read_split,  # noqa: E402
                         write_split)

# where each file lives in --source, and where it can be downloaded from
FILES = {
    "gsm8k/train.jsonl": "https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data/train.jsonl",
    "gsm8k_aug/valid.txt": "https://raw.githubusercontent.com/da03/Internalize_CoT_Step_by_Step/main/data/gsm8k/valid.txt",
    "gsm8k_aug/test.txt": "https://raw.githubusercontent.com/da03/Internalize_CoT_Step_by_Step/main/data/gsm8k/test.txt",
}
AUG_TRAIN_URL = "https://media.githubusercontent.com/media/da03/Internalize_CoT_Step_by_Step/main/data/gsm8k/train.txt"


def parse_gsm8k_answer(answer, where="<answer>"):
    """A GSM8K answer text -> (steps, final answer): the <<...>> equations in order, and what follows `####`."""
    if "####" not in answer:
        raise DataError(f"{where}: malformed GSM8K answer, no '#### answer' line")
    body, final = answer.rsplit("####", 1)
    final = normalise_answer(final)
    if not final:
        raise DataError(f"{where}: malformed GSM8K answer, empty final answer")
    return [s.strip() for s in STEP.findall(body)], final


def read_gsm8k_jsonl(path):
    """All examples of a GSM8K jsonl file, as a list of (question, steps, answer)."""
    out = []
    for i, line in enumerate(read_lines(path), 1):
        if not line.strip():
            continue
        where = f"{path}:{i}"
        try:
            row = json.loads(line)
            question, answer = row["question"], row["answer"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DataError(f"{where}: malformed line, expected JSON with 'question' and 'answer' ({e})") from None
        if not (isinstance(question, str) and isinstance(answer, str)):
            raise DataError(f"{where}: malformed line, 'question' and 'answer' must be text")
        steps, final = parse_gsm8k_answer(answer, where)
        out.append((question.replace("\n", " ").strip(), steps, final))
    return out


def fetch(source, rel, out_dir, url, fix=None):
    """The path of source/rel, or (source empty or the file missing there) of out_dir/raw/rel, downloaded from `url`
    when it is not there yet. `fix`: what the error tells the user to do when the download fails (default: give
    --source or COLAR_DATA a folder that holds rel)."""
    path = os.path.join(source, rel) if source else ""
    if path and os.path.exists(path):
        return path
    local = os.path.join(out_dir, "raw", rel)
    if os.path.exists(local):
        return local
    os.makedirs(os.path.dirname(local), exist_ok=True)
    missing = f"{path} is missing" if path else f"{rel} is not in {os.path.join(out_dir, 'raw')}"
    print(f"{missing}: downloading {url}")
    try:
        urllib.request.urlretrieve(url, local + ".tmp")
    except OSError as e:
        raise UserError(f"{missing} and downloading {url} failed ({e}); "
                        + (fix or f"give --source (or COLAR_DATA) a folder that holds {rel}")) from None
    os.replace(local + ".tmp", local)
    return local


@dataclass
class GSM8KConfig:
    source: str = ""         # folder holding gsm8k/train.jsonl and gsm8k_aug/{valid,test}.txt; "": $COLAR_DATA,
                             # and where that is unset too, each file is downloaded into --out/raw
    aug_train: str = ""      # optional: the ~385k-line GSM8K-Aug train.txt ("download" fetches it)
    out: str = "data/gsm8k"  # where train.txt, val.txt and test.txt are written


def main(cfg):
    check_folder(cfg.out, "--out", SPLIT_FILES)
    if cfg.source and not os.path.isdir(cfg.source):  # a mistyped path: say so, rather than download the files
        raise UserError(f"--source {cfg.source} is not a folder (one that holds {', '.join(FILES)})")
    source = cfg.source or os.environ.get("COLAR_DATA", "")
    if source and not cfg.source:
        print(f"reading the source files from COLAR_DATA={source}")
    needed = [rel for rel in FILES if not (cfg.aug_train and rel == "gsm8k/train.jsonl")]  # what this run reads
    paths = {rel: fetch(source, rel, cfg.out, FILES[rel]) for rel in needed}
    val = read_split(paths["gsm8k_aug/valid.txt"])
    test = read_split(paths["gsm8k_aug/test.txt"])
    if cfg.aug_train:
        src = cfg.aug_train if cfg.aug_train != "download" else fetch(
            "", "gsm8k_aug/train.txt", cfg.out, AUG_TRAIN_URL, fix="give --aug_train the path of GSM8K-Aug's train.txt")
        source_train = read_split(src)
    else:
        source_train = read_gsm8k_jsonl(paths["gsm8k/train.jsonl"])
    held_out = {" ".join(q.split()) for q, _, _ in val + test}  # a question of val or test is never trained on
    train = [ex for ex in source_train if " ".join(ex[0].split()) not in held_out]
    os.makedirs(cfg.out, exist_ok=True)
    for name, examples in (("train", train), ("val", val), ("test", test)):
        write_split(os.path.join(cfg.out, f"{name}.txt"), examples)
    empty = sum(1 for _, s, _ in train if not s)
    print(f"wrote {cfg.out}: train {len(train):,} ({empty} with an empty chain; {len(source_train) - len(train):,} "
          f"held out, being val or test questions), val {len(val):,}, test {len(test):,}")
    return {"train": len(train), "val": len(val), "test": len(test)}


if __name__ == "__main__":
    run_cli(main, parse_config(GSM8KConfig))

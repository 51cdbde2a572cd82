"""
The GSM8K-Aug line format every data set here is written in, one example per line:

    question||<<expr=result>> <<expr=result>> ... #### answer

The chain (the steps between `||` and `####`) may be empty. Answers are compared after normalisation.
"""
import os
import re
from decimal import Decimal, InvalidOperation

from common import UserError

STEP = re.compile(r"<<([^<>]*)>>")


class DataError(UserError):
    """A malformed data file or line; the message names the file and line."""


def parse_line(line, where="<line>"):
    """One GSM8K-Aug line -> (question, steps, answer); `steps` is a list of step strings without `<< >>`."""
    line = line.rstrip("\n")
    if "||" not in line:
        raise DataError(f"{where}: malformed line, no '||' between question and chain: {line[:80]!r}")
    question, rest = line.rsplit("||", 1)
    if "####" not in rest:
        raise DataError(f"{where}: malformed line, no '####' before the answer: {line[:80]!r}")
    chain, answer = rest.rsplit("####", 1)
    steps = STEP.findall(chain)
    leftover = STEP.sub("", chain).strip()
    if leftover:
        raise DataError(f"{where}: malformed chain, text outside <<...>> steps ({leftover[:40]!r}): {line[:80]!r}")
    question, answer = question.strip(), normalise_answer(answer)
    if not question:
        raise DataError(f"{where}: malformed line, empty question: {line[:80]!r}")
    if not answer:
        raise DataError(f"{where}: malformed line, empty answer: {line[:80]!r}")
    return question, [s.strip() for s in steps], answer


def format_line(question, steps, answer):
    chain = " ".join(f"<<{s}>>" for s in steps)
    return f"{question}||{chain} #### {answer}"


def chain_text(steps):
    """The reasoning chain as the model reads and writes it."""
    return " ".join(f"<<{s}>>" for s in steps)


def check_split(path):
    """Refuse, before any work, a data file that cannot be read: missing, a folder, or in a data folder that is a
    file or missing (a --data_dir naming a file, say)."""
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise DataError(f"{folder} is a file, not a data folder" if os.path.exists(folder)
                        else f"data folder not found: {folder}")
    if os.path.isdir(path):
        raise DataError(f"{path} is a folder, not a data file")
    if not os.path.exists(path):
        raise DataError(f"data file not found: {path}")


SPLIT_FILES = ("train.txt", "val.txt", "test.txt")  # what a data folder holds


def read_lines(path):
    """The lines of a data file; one line saying why when it cannot be read."""
    check_split(path)
    try:
        with open(path, encoding="utf-8") as f:
            return f.readlines()
    except OSError as e:
        raise DataError(f"cannot read data file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None


def read_split(path):
    """All examples of a GSM8K-Aug file, as a list of (question, steps, answer); an empty file gives []."""
    return [parse_line(line, f"{path}:{i}") for i, line in enumerate(read_lines(path), 1) if line.strip()]


def read_train_val(data_dir):
    """A data folder's training and validation examples; neither may be empty (a run keeps its checkpoints by
    validation accuracy)."""
    train = read_split(os.path.join(data_dir, "train.txt"))
    val = read_split(os.path.join(data_dir, "val.txt"))
    if not train:
        raise DataError(f"no training examples in {os.path.join(data_dir, 'train.txt')}")
    if not val:
        raise DataError(f"no validation examples in {os.path.join(data_dir, 'val.txt')}: model selection needs some")
    return train, val


def write_split(path, examples):
    """Write a split whole or not at all (a temporary file renamed): an interrupted run leaves no split cut short."""
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        for q, steps, a in examples:
            f.write(format_line(q, steps, a) + "\n")
    os.replace(path + ".tmp", path)


def normalise_answer(text):
    """'1,450,000' -> '1450000', '18.0' -> '18', ' $5 ' -> '5'; anything else is kept, stripped."""
    s = text.strip().replace(",", "").replace("$", "").strip()
    if re.fullmatch(r"-?\d+\.0*", s):
        s = s.split(".")[0]
    return s


def answers_match(predicted, reference):
    """Equal as numbers after normalisation, exactly (1450001 is not 1450000, and no float rounds a 20-digit answer),
    else equal as strings; nan and infinity match nothing."""
    p, r = normalise_answer(predicted), normalise_answer(reference)
    try:
        pd, rd = Decimal(p), Decimal(r)
    except InvalidOperation:
        return p == r
    return pd.is_finite() and rd.is_finite() and pd == rd

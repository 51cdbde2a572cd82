"""
The full definition of the small GPT this project trains, all of it in this one file.

What it adds to a plain nanoGPT-style model, because latent reasoning needs it:
- forward() takes token ids, input embeddings, or both (token ids first, then embeddings: prompt tokens, then latents);
- explicit position ids, so left-padded rows and rows of different lengths get the positions of their real tokens;
- a padding mask (True = real position) for left- or right-padded batches;
- it returns the final hidden states (after the final LayerNorm) beside the logits: the latent head reads them;
- a KV cache (KVCache) for batched incremental decoding, whose rows can be dropped when they finish.
Positions are rotary (RoPE, the default for from-scratch training) or learned (as pretrained GPT-2 has).
GPT.from_pretrained("gpt2") loads GPT-2's weights from Hugging Face, or from a local save_pretrained folder (needs the
optional transformers package).
"""
import json
import math
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    vocab_size: int = 64      # number of token ids (the tokenizer's n_vocab)
    block_size: int = 256     # longest sequence (prompt + reasoning + answer) the model is built for
    n_layer: int = 4          # transformer blocks
    n_head: int = 4           # attention heads per block
    n_embd: int = 128         # width of the residual stream
    dropout: float = 0.0      # dropout in attention and MLP outputs (0 for these small tasks)
    pos_emb: str = "rope"     # "rope" (rotary, no parameters) or "learned" (a table, as in GPT-2)
    rope_base: float = 10000.0
    bias: bool = True         # biases in Linear layers and LayerNorms (GPT-2 has them)
    gelu_approx: str = "none" # the MLP's GELU: "none" (exact, erf) or "tanh" (the approximation GPT-2 was trained with)


class KVCache:
    """Keys and values of every layer for the positions seen so far, plus which of them are real (not padding).

    k[i], v[i]: (B, n_head, T_past, head_dim); mask: (B, T_past) bool. Grows by concatenation: simple, and cheap
    at these sizes. keep(rows) drops finished rows so that they cost nothing in later steps."""

    def __init__(self, n_layer):
        self.k = [None] * n_layer
        self.v = [None] * n_layer
        self.mask = None

    def __len__(self):
        return 0 if self.mask is None else self.mask.size(1)

    def keep(self, rows):
        """Keep only the batch rows `rows` (a LongTensor of row indices)."""
        self.k = [t.index_select(0, rows) for t in self.k]
        self.v = [t.index_select(0, rows) for t in self.v]
        self.mask = self.mask.index_select(0, rows)


def rope_rotate(x, pos, base):
    """Rotate query/key pairs by angles proportional to their positions. x: (B, H, T, D), pos: (B, T)."""
    D = x.size(-1)
    inv_freq = 1.0 / (base ** (torch.arange(0, D, 2, device=x.device, dtype=torch.float32) / D))  # (D/2,)
    ang = pos.float()[:, None, :, None] * inv_freq  # (B, 1, T, D/2)
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)  # (B, H, T, D/2, 2)
    return out.flatten(-2)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0, "n_embd must be divisible by n_head"
        self.cfg = cfg
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, pos, attn_mask, cache, layer):
        B, T, C = x.shape
        H = self.cfg.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd)
        if self.cfg.pos_emb == "rope":
            q, k = rope_rotate(q, pos, self.cfg.rope_base), rope_rotate(k, pos, self.cfg.rope_base)
        if cache is not None:
            if cache.k[layer] is not None:
                k = torch.cat([cache.k[layer], k], dim=2)
                v = torch.cat([cache.v[layer], v], dim=2)
            cache.k[layer], cache.v[layer] = k, v
        drop = self.cfg.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=drop)  # (B, H, T, hd)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)
        self.gelu_approx = cfg.gelu_approx

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate=self.gelu_approx)))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x, pos, attn_mask, cache, layer):
        x = x + self.attn(self.ln_1(x), pos, attn_mask, cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    PRETRAINED = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")  # the names from_pretrained knows

    def __init__(self, cfg):
        super().__init__()
        if cfg.pos_emb not in ("rope", "learned"):
            raise ValueError(f"pos_emb must be 'rope' or 'learned', got {cfg.pos_emb!r}")
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.pos_emb == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied input and output embeddings
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2's scaled init of the residual projections
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @classmethod
    def from_pretrained(cls, name_or_path, vocab_size=None):
        """GPT-2 with Hugging Face's weights: a size (one of PRETRAINED), downloaded on first use and cached by
        transformers, or a local folder in Hugging Face's layout (config.json and the weights, as save_pretrained
        writes them), read offline. vocab_size: as in from_hf_gpt2."""
        local = os.path.isdir(name_or_path)
        if not local and name_or_path not in cls.PRETRAINED:
            raise ValueError(f"unknown pretrained model {name_or_path!r}: use one of {', '.join(cls.PRETRAINED)}, "
                             f"or a folder that save_pretrained wrote")
        if local:
            config = os.path.join(name_or_path, "config.json")
            if not os.path.isfile(config):
                raise ValueError(f"{name_or_path} has no config.json: not a model folder in Hugging Face's layout")
            try:
                with open(config) as f:
                    meta = json.load(f)
            except (OSError, ValueError) as e:
                raise ValueError(f"{config} cannot be read as JSON ({e})") from None
            kind = meta.get("model_type") if isinstance(meta, dict) else None
            if kind != "gpt2":
                raise ValueError(f"{config} describes a model of type {kind!r}, not GPT-2 ('gpt2')")
        try:
            from transformers import GPT2LMHeadModel  # optional: only this function needs it
        except ImportError:
            raise ImportError(f"loading pretrained {name_or_path} needs the transformers package: "
                              f"pip install transformers (or pip install -e '.[hf]')") from None
        return cls.from_hf_gpt2(GPT2LMHeadModel.from_pretrained(name_or_path, local_files_only=local), vocab_size)

    @classmethod
    def from_hf_gpt2(cls, hf_model, vocab_size=None):
        """Our GPT with the weights of a Hugging Face GPT2LMHeadModel, giving the same logits.

        The config follows GPT-2: learned positions, biases, the tanh GELU, LayerNorm eps 1e-5 (nn.LayerNorm's
        default, so from-scratch models have it too) and tied input and output embeddings (ours always are).
        Hugging Face keeps the projections as Conv1D with (in, out) weights; nn.Linear's are (out, in), so those are
        transposed.
        vocab_size may exceed GPT-2's 50,257 ids, for our special tokens after them. Each new embedding row is the
        mean of the pretrained rows; as the head is tied, a new token's logit is then the mean of the pretrained
        tokens' logits at every position, so it starts as an ordinary prediction, neither dominant nor out of reach.
        """
        hc = hf_model.config
        differs = {"layer_norm_epsilon": hc.layer_norm_epsilon != 1e-5,
                   "tie_word_embeddings": not hc.tie_word_embeddings,
                   "n_inner": hc.n_inner not in (None, 4 * hc.n_embd),
                   "activation_function": hc.activation_function not in ("gelu_new", "gelu_pytorch_tanh", "gelu"),
                   "scale_attn_weights": not hc.scale_attn_weights,
                   "scale_attn_by_inverse_layer_idx": hc.scale_attn_by_inverse_layer_idx}
        if any(differs.values()):
            raise ValueError(f"this GPT-2 differs from model.py's architecture in: "
                             f"{', '.join(k for k, v in differs.items() if v)}")
        V = hc.vocab_size
        vocab_size = vocab_size or V
        if vocab_size < V:
            raise ValueError(f"vocab_size {vocab_size} is smaller than the pretrained model's {V}")
        cfg = GPTConfig(vocab_size=vocab_size, block_size=hc.n_positions, n_layer=hc.n_layer, n_head=hc.n_head,
                        n_embd=hc.n_embd, pos_emb="learned", bias=True,
                        gelu_approx="none" if hc.activation_function == "gelu" else "tanh")
        model = cls(cfg)
        src = hf_model.state_dict()
        conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
        with torch.no_grad():
            for k, p in model.state_dict().items():
                if k == "lm_head.weight":
                    continue  # the same tensor as wte.weight
                w = src["transformer." + k.replace("blocks.", "h.")]
                if k.endswith(conv1d):
                    w = w.t()
                if k == "wte.weight":
                    p[:V] = w
                    p[V:] = w.mean(dim=0)  # the new tokens' rows (see above)
                else:
                    p.copy_(w)
        return model

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx=None, embeds=None, pos=None, mask=None, cache=None, targets=None):
        """
        idx:    (B, Ti) token ids, or None
        embeds: (B, Te, C) input embeddings placed after the tokens (latents), or None
        pos:    (B, T) position ids, T = Ti + Te; default: positions continue from the cache's length, 0, 1, 2,
                ... (right only without left padding: a padded batch passes its own)
        mask:   (B, T) bool, True where the position is real (not padding); default: all real
        cache:  a KVCache; the new keys/values are appended to it
        targets:(B, T) token ids to predict at each position, -1 where nothing is predicted
        Returns (logits (B, T, vocab), loss, h): loss is the mean cross-entropy over targets != -1 (None without
        targets), h the final hidden states (B, T, C), after the final LayerNorm, which the latent head reads.
        """
        parts = []
        if idx is not None:
            parts.append(self.wte(idx))
        if embeds is not None:
            parts.append(embeds)
        if not parts:
            raise ValueError("forward() needs idx, embeds or both")
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]  # (B, T, C)
        B, T, _ = x.shape
        past = 0 if cache is None else len(cache)
        if mask is None:
            mask = torch.ones(B, T, dtype=torch.bool, device=x.device)
        if pos is None:
            pos = torch.arange(past, past + T, device=x.device).expand(B, T)
        if int(pos.max()) >= self.cfg.block_size:
            raise ValueError(f"sequence reaches position {int(pos.max())}, but the model's block_size is "
                             f"{self.cfg.block_size}: shorten the input or build the model with a larger block_size")
        if self.wpe is not None:
            x = x + self.wpe(pos)
        x = self.drop(x)

        # Attention mask (B, 1, T, past + T): a query sees earlier-or-same positions that are real.
        key_mask = mask if cache is None or cache.mask is None else torch.cat([cache.mask, mask], dim=1)
        causal = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
        attn_mask = causal[None] & key_mask[:, None, :]
        # A padding query may see no real key at all; letting every query see itself keeps softmax finite.
        attn_mask[:, torch.arange(T), torch.arange(past, past + T)] = True
        attn_mask = attn_mask[:, None]
        if cache is not None:
            cache.mask = key_mask

        for i, block in enumerate(self.blocks):
            x = block(x, pos, attn_mask, cache, i)
        h = self.ln_f(x)  # (B, T, C) final hidden states
        logits = self.lm_head(h)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-1, reduction="sum")
            loss = loss / (targets != -1).sum().clamp(min=1)  # a fully masked batch gives 0, not NaN
        return logits, loss, h

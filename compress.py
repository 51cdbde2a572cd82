"""
Embedding compression: `c` consecutive reasoning-token embeddings become one compressed embedding.

Chunk k of a chain (tokens k*c .. k*c + c - 1; the last chunk may be partial) becomes

    e_k = (sum of the embeddings of its n_k real tokens) / sqrt(n_k)        ("sqrt", CoLaR's choice)
    e_k = (sum of the embeddings of its n_k real tokens) / n_k              ("mean", the MP ablation)

Why sqrt: token embeddings are roughly zero-mean and uncorrelated, so a sum of n of them has n times the variance;
dividing by sqrt(n) keeps a compressed embedding on the scale of a single token embedding, whereas the mean shrinks
its variance n-fold. Padding never counts; a chunk of padding alone (a shorter row's, past its chain) is zero and
masked out. Pure tensor functions, no parameters.
"""
import torch


def compress(emb, ids, mask, c, pool="sqrt"):
    """
    emb:  (B, L, C) embeddings of the reasoning tokens, right-padded
    ids:  (B, L) their token ids
    mask: (B, L) bool, True at real tokens (a prefix of each row)
    c:    compression factor, >= 1
    Returns
      z:         (B, K, C) compressed embeddings, K = ceil(longest chain / c); zeros where zmask is False
      zmask:     (B, K) bool, True where the chunk holds at least one real token
      chunk_ids: (B, K, c) the token ids of each chunk, -1 at padding (for the chunk labels)
    """
    if c < 1:
        raise ValueError(f"compression factor c must be >= 1, got {c}")
    if pool not in ("sqrt", "mean"):
        raise ValueError(f"pool must be 'sqrt' or 'mean', got {pool!r}")
    B, L, C = emb.shape
    if L > 0 and (mask[:, 1:] & ~mask[:, :-1]).any():
        raise ValueError("compress() expects right-padded chains: a real token follows a pad")
    K = -(-int(mask.sum(1).max()) // c) if L > 0 else 0  # chunks of the longest chain
    pad = K * c - L
    if pad > 0:  # make the length a multiple of c
        emb = torch.cat([emb, emb.new_zeros(B, pad, C)], dim=1)
        ids = torch.cat([ids, ids.new_full((B, pad), -1)], dim=1)
        mask = torch.cat([mask, mask.new_zeros(B, pad)], dim=1)
    emb, ids, mask = emb[:, :K * c], ids[:, :K * c], mask[:, :K * c]  # drop all-pad trailing columns
    m = mask.view(B, K, c)
    n = m.sum(-1)  # (B, K) real tokens per chunk
    total = (emb.view(B, K, c, C) * m[..., None]).sum(2)  # (B, K, C)
    norm = n.clamp(min=1).float()
    z = total / (norm.sqrt() if pool == "sqrt" else norm)[..., None].to(total.dtype)
    chunk_ids = ids.view(B, K, c).masked_fill(~m, -1)
    return z, n > 0, chunk_ids


def sample_chunk_labels(chunk_ids, generator=None):
    """One token drawn uniformly from each chunk's real tokens: (B, K, c) -> (B, K); -1 for an all-pad chunk."""
    real = chunk_ids >= 0
    scores = torch.rand(chunk_ids.shape, generator=generator, device=chunk_ids.device).masked_fill(~real, -1.0)
    pick = scores.argmax(-1, keepdim=True)  # the largest uniform score among real tokens: a uniform choice
    labels = chunk_ids.gather(-1, pick).squeeze(-1)
    return labels.masked_fill(~real.any(-1), -1)

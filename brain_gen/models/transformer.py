"""The causal transformer shared by ChannelGPT and TextGPT: rotary positions, pre-norm blocks, tied head."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def rotary_tables(max_positions: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables ``[max_positions, head_dim // 2]`` for rotary position encoding."""
    inverse_frequency = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(max_positions, dtype=torch.float32), inverse_frequency)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs of features of ``x`` ``[..., T, head_dim]`` by their position's angle."""
    even, odd = x[..., 0::2], x[..., 1::2]
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    return rotated.flatten(-2).type_as(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, time, width = x.shape
        q, k, v = self.qkv(x).view(batch, time, 3, self.n_heads, width // self.n_heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        attended = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        return self.resid_dropout(self.proj(attended.transpose(1, 2).reshape(batch, time, width)))

    def forward_cached(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, start: int
    ) -> torch.Tensor:
        """Attention of ``x`` ``[N, t, d_model]`` at positions ``start..start+t-1`` over all cached ones.

        ``keys`` and ``values`` ``[N, heads, max_positions, head_dim]`` hold the first
        ``start`` positions; this step's keys and values are written after them.
        ``cos`` and ``sin`` are the rotary rows of this step's positions. Eval only (no dropout).
        """
        batch, time, width = x.shape
        q, k, v = self.qkv(x).view(batch, time, 3, self.n_heads, width // self.n_heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        end = start + time
        keys[:, :, start:end], values[:, :, start:end] = k, v
        if start == 0:
            # A prefill: the same causal attention as training, over this step alone.
            attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            # Query i sits at position start + i and may see every position up to it.
            visible = None if time == 1 else torch.ones(time, end, dtype=torch.bool, device=x.device).tril(diagonal=start)
            attended = F.scaled_dot_product_attention(q, keys[:, :, :end], values[:, :, :end], attn_mask=visible)
        return self.proj(attended.transpose(1, 2).reshape(batch, time, width))


class Block(nn.Module):
    """Pre-norm transformer block: attention then a 4x MLP, each with a residual."""

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.attention_norm = nn.LayerNorm(d_model)
        self.attention = CausalSelfAttention(d_model, n_heads, dropout)
        self.mlp_norm = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))

    def forward_cached(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, start: int
    ) -> torch.Tensor:
        """``forward`` for positions ``start..`` of ``x`` ``[N, t, d_model]``, attending to cached keys and values."""
        x = x + self.attention.forward_cached(self.attention_norm(x), cos, sin, keys, values, start)
        return x + self.mlp(self.mlp_norm(x))


class KVCache:
    """Keys and values of every layer for ``N`` sequences of up to ``max_positions`` steps.

    ``keys`` and ``values`` are ``[n_layers, N, heads, max_positions, head_dim]``; the
    first ``length`` positions are filled. ``clear`` makes room for a new prefill
    without reallocating.
    """

    def __init__(self, n_layers: int, sequences: int, n_heads: int, max_positions: int, head_dim: int, like: torch.Tensor):
        shape = (n_layers, sequences, n_heads, max_positions, head_dim)
        self.keys = torch.empty(shape, dtype=like.dtype, device=like.device)
        self.values = torch.empty(shape, dtype=like.dtype, device=like.device)
        self.length = 0

    def clear(self) -> None:
        self.length = 0


class CausalTransformer(nn.Module):
    """Token embedding, causal pre-norm blocks with rotary positions, and a tied output head.

    Args:
        vocab_size: tokens (or codes) in and out.
        d_model: width; n_layers: blocks; n_heads: attention heads (even head size).
        dropout: dropout on embeddings, attention and MLP outputs.
        max_position_embeddings: longest sequence accepted; rope_theta: rotary base.

    ``forward`` takes embedded sequences ``[N, T, d_model]`` (the caller adds what else
    it embeds, such as channels) and returns logits ``[N, T, vocab_size]``.

    Generation goes through ``rollout`` (see there for the window policy past
    ``max_position_embeddings``), built on ``extend`` (cached) and ``last_logits``
    (recomputed).
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        n_layers: int,
        n_heads: int,
        dropout: float,
        max_position_embeddings: int,
        rope_theta: float,
    ):
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("d_model", d_model), ("n_layers", n_layers), ("n_heads", n_heads), ("max_position_embeddings", max_position_embeddings)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if d_model % n_heads or (d_model // n_heads) % 2:
            raise ValueError(f"d_model ({d_model}) must split into {n_heads} heads of even size")
        self.vocab_size = vocab_size
        self.head_dim = d_model // n_heads
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, dropout) for _ in range(n_layers))
        self.final_norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        # Tied input and output embeddings: fewer parameters, and it trains faster.
        self.head.weight = self.token_embedding.weight
        self.set_context(max_position_embeddings, rope_theta)
        self.apply(init_weights)

    def set_context(self, max_position_embeddings: int, rope_theta: float) -> None:
        """(Re)build the rotary tables for a new longest sequence or rotary base."""
        if max_position_embeddings < 1:
            raise ValueError(f"max_position_embeddings must be at least 1, got {max_position_embeddings}")
        if not rope_theta > 0:
            raise ValueError(f"rope_theta must be positive, got {rope_theta}")
        self.max_position_embeddings = int(max_position_embeddings)
        self.rope_theta = float(rope_theta)
        device = self.token_embedding.weight.device
        cos, sin = rotary_tables(self.max_position_embeddings, self.head_dim, self.rope_theta)
        self.register_buffer("rope_cos", cos.to(device), persistent=False)
        self.register_buffer("rope_sin", sin.to(device), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.final_norm(self.hidden_states(x)))

    def hidden_states(self, x: torch.Tensor) -> torch.Tensor:
        """Output ``[N, T, d_model]`` of the last block for embedded sequences ``x`` ``[N, T, d_model]``."""
        time = x.shape[1]
        if time > self.max_position_embeddings:
            raise ValueError(f"sequence of {time} steps exceeds max_position_embeddings={self.max_position_embeddings}")
        x = self.dropout(x)
        cos, sin = self.rope_cos[:time], self.rope_sin[:time]
        for layer, block in enumerate(self.blocks):
            x = self.after_block(layer, block(x, cos, sin))
        return x

    def after_block(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """What runs on the output ``[N, t, d_model]`` of block ``layer``, in training and generation alike.

        Nothing here; a subclass adds to it (SpaceTimeGPT mixes channels there).
        """
        return x

    def new_cache(self, sequences: int) -> KVCache:
        """An empty cache for ``sequences`` sequences of up to ``max_position_embeddings`` steps."""
        n_heads = self.blocks[0].attention.n_heads
        return KVCache(len(self.blocks), sequences, n_heads, self.max_position_embeddings, self.head_dim, self.token_embedding.weight)

    def extend(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Append embedded steps ``x`` ``[N, t, d_model]`` to ``cache``; logits ``[N, vocab_size]`` of the last one.

        The steps take the positions after those already cached (from 0 on an empty
        cache: a prefill). Eval only: no dropout.
        """
        start, time = cache.length, x.shape[1]
        end = start + time
        if end > self.max_position_embeddings:
            raise ValueError(f"cache of {end} steps exceeds max_position_embeddings={self.max_position_embeddings}")
        cos, sin = self.rope_cos[start:end], self.rope_sin[start:end]
        for layer, block in enumerate(self.blocks):
            x = self.after_block(layer, block.forward_cached(x, cos, sin, cache.keys[layer], cache.values[layer], start))
        cache.length = end
        return self.head(self.final_norm(x[:, -1]))

    def last_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, vocab_size]`` after the last of the embedded steps ``x`` ``[N, T, d_model]``, all recomputed."""
        return self.head(self.final_norm(self.hidden_states(x)[:, -1]))

    def rollout(
        self,
        context: torch.Tensor,
        steps: int,
        embed: Callable[[torch.Tensor, int], torch.Tensor],
        pick: Callable[[torch.Tensor], torch.Tensor],
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Continue ``context`` ``[N, T]`` (T >= 1) token by token; the ``steps`` new tokens, int64 ``[N, steps]``.

        ``embed(history, start)`` returns the embedding ``[N, L - start, d_model]`` of
        ``history[:, start:]``, where ``history`` ``[N, L]`` is the context followed by
        the tokens generated so far. ``pick(logits [N, vocab_size])`` returns the next
        tokens ``[N]``. Call it in eval mode, without autograd.

        Window policy, with W = ``max_position_embeddings``: the model sees a window of
        at most W of the latest tokens, at positions 0.. from its first. A context
        longer than W starts as its last W tokens. When a new token would make the
        window longer than W, the window becomes the last ``max(1, W // 2)`` tokens
        (the new one included), re-encoded from position 0 in one prefill, and
        generation goes on from there. ``use_cache=False`` follows the same policy but
        recomputes the whole window at every step instead of appending one step to
        the cache: the slow reference for the cached path.
        """
        sequences, context_length = context.shape
        if context_length < 1:
            raise ValueError("a rollout needs a context of at least one step")
        window_limit = self.max_position_embeddings
        kept_after_slide = max(1, window_limit // 2)
        history = torch.empty(sequences, context_length + steps, dtype=torch.long, device=context.device)
        history[:, :context_length] = context
        length = context_length
        window_start = max(0, context_length - window_limit)
        cache = self.new_cache(sequences) if use_cache else None
        for step in range(steps):
            refill = step == 0
            if length - window_start > window_limit:
                window_start, refill = length - kept_after_slide, True
            if cache is None:
                logits = self.last_logits(embed(history[:, :length], window_start))
            elif refill:
                cache.clear()
                logits = self.extend(embed(history[:, :length], window_start), cache)
            else:
                logits = self.extend(embed(history[:, :length], length - 1), cache)
            history[:, length] = pick(logits)
            length += 1
        return history[:, context_length:].clone()


def init_weights(module: nn.Module) -> None:
    """GPT-style initialisation: small normal weights, zero biases."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)

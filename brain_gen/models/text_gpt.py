"""TextGPT: a causal transformer over BPE tokens of brain signals rendered as text."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from brain_gen.config.schema import SamplingConfig
from brain_gen.models.sampling import generating, sample_next
from brain_gen.models.transformer import CausalTransformer, init_weights


class TextGPT(nn.Module):
    """Next-token prediction over TextDataLoader batches.

    Each token's embedding is its token embedding plus the embedding of the channel it
    came from (one extra embedding stands for separators and padding, channel id -1).

    Args:
        vocab_size: tokens in the tokenizer (at least its vocabulary size).
        num_channels: channels in the dataset's layout.
        d_model, n_layers, n_heads, dropout: transformer size.
        max_position_embeddings: longest token sequence.
        rope_theta: base of the rotary position encoding.

    Input: ``(input_ids, attention_mask, channel_ids)``, each ``[B, T]``. Output: logits
    ``[B, T, vocab_size]``. Padding sits at the end of each row, so causal attention
    already keeps real tokens from seeing it; the loss ignores padded positions.
    ``forecast`` continues unpadded contexts token by token.
    """

    def __init__(
        self,
        vocab_size: int,
        num_channels: int,
        d_model: int = 128,
        n_layers: int = 4,
        n_heads: int = 4,
        dropout: float = 0.0,
        max_position_embeddings: int = 2048,
        rope_theta: float = 10000.0,
    ):
        super().__init__()
        if num_channels < 1:
            raise ValueError(f"num_channels must be at least 1, got {num_channels}")
        self.transformer = CausalTransformer(vocab_size, d_model, n_layers, n_heads, dropout, max_position_embeddings, rope_theta)
        self.channel_embedding = nn.Embedding(num_channels + 1, d_model)
        init_weights(self.channel_embedding)
        self.vocab_size = vocab_size
        self.num_channels = num_channels
        self.max_position_embeddings = max_position_embeddings

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, channel_ids: torch.Tensor) -> torch.Tensor:
        return self.transformer(self.embed(input_ids, channel_ids))

    def embed(self, input_ids: torch.Tensor, channel_ids: torch.Tensor) -> torch.Tensor:
        """Token plus channel embeddings ``[B, T, d_model]`` of ``input_ids`` and ``channel_ids`` ``[B, T]``."""
        # Channel id -1 (separators, padding) uses the extra last embedding.
        channels = torch.where(channel_ids < 0, self.num_channels, channel_ids)
        return self.transformer.token_embedding(input_ids) + self.channel_embedding(channels)

    def forecast(
        self,
        context: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        steps: int,
        sampling: SamplingConfig | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
        next_channel_ids: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Continue ``context`` by ``steps`` tokens: the generated token ids, int64 ``[B, steps]``.

        Args:
            context: ``(input_ids, attention_mask, channel_ids)``, each ``[B, T]`` with
                T >= 1 and no padding (the mask is all ones).
            steps: tokens to generate.
            sampling: how each token is drawn; None: ``SamplingConfig()``.
            generator: the source of every draw; seed it to repeat a rollout.
            use_cache: False recomputes the window at every step (slow; the reference).
            next_channel_ids: ``f(token_ids [B, T + t]) -> [B]``: the channel id of the
                newest token, given the context followed by the ``t`` tokens generated so
                far. The caller knows the tokenizer, so it tracks which channel's word the
                text is in. None: generated tokens get channel id -1 (no channel).

        Past ``max_position_embeddings`` the window slides as ``CausalTransformer.rollout``
        describes. Runs in eval mode without autograd and leaves the training flag as it was.
        """
        input_ids, attention_mask, channel_ids = context
        if input_ids.dim() != 2 or input_ids.shape[1] < 1 or input_ids.shape != channel_ids.shape or input_ids.shape != attention_mask.shape:
            raise ValueError(
                "TextGPT.forecast expects input_ids, attention_mask and channel_ids of one shape [batch, time >= 1], got "
                f"{tuple(input_ids.shape)}, {tuple(attention_mask.shape)}, {tuple(channel_ids.shape)}"
            )
        if not bool(attention_mask.bool().all()):
            raise ValueError("TextGPT.forecast needs unpadded contexts: every attention_mask entry must be 1")
        sampling = sampling or SamplingConfig()
        batch, time = input_ids.shape
        with generating(self):
            # Channel ids of the history, one column per token, filled in as tokens are embedded.
            history_channels = torch.full((batch, time + steps), -1, dtype=torch.long, device=input_ids.device)
            history_channels[:, :time] = channel_ids
            known = time

            def embed(history: torch.Tensor, start: int) -> torch.Tensor:
                nonlocal known
                # A generated token's channel is asked for once, when it is first embedded.
                while known < history.shape[1]:
                    if next_channel_ids is not None:
                        history_channels[:, known] = next_channel_ids(history[:, : known + 1])
                    known += 1
                return self.embed(history[:, start:], history_channels[:, start : history.shape[1]])

            return self.transformer.rollout(
                input_ids.long(), steps, embed, lambda logits: sample_next(logits, sampling, generator), use_cache
            )

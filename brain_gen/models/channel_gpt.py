"""ChannelGPT: a decoder-only transformer that predicts each channel's next mu-law code.

Every channel is its own sequence over time. A learned channel embedding tells the
shared transformer which sensor it is reading; rotary position encoding gives it
time. Channels do not attend to each other, which keeps attention cost linear in
the number of channels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from brain_gen.config.schema import SamplingConfig
from brain_gen.models.sampling import check_code_context, generating, sample_next
from brain_gen.models.transformer import CausalTransformer, init_weights


@dataclass
class TokenCorruption:
    """Replace a share ``p`` of input codes with uniformly random codes while training.

    A regulariser: the model learns not to trust every input code. Never applied in eval.
    """

    enabled: bool = True
    p: float = 0.1
    mode: str = "random"

    def __post_init__(self):
        if not isinstance(self.enabled, bool):
            raise ValueError(f"token corruption enabled must be true or false, got {self.enabled!r}")
        if isinstance(self.p, bool) or not isinstance(self.p, (int, float)) or not 0.0 <= self.p <= 1.0:
            raise ValueError(f"token corruption p must be a number in [0, 1], got {self.p!r}")
        if self.mode != "random":
            raise ValueError(f"token corruption mode {self.mode!r} is not supported; use 'random'")

    @classmethod
    def from_mapping(cls, settings: dict[str, Any] | None) -> TokenCorruption:
        if settings is None:
            return cls(enabled=False, p=0.0)
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ValueError(f"unknown token corruption key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
        return cls(**settings)


class ChannelGPT(nn.Module):
    """Next-code prediction for every channel of a mu-law coded recording.

    Args:
        vocab_size: number of codes (mu + 1 for mu-law with parameter mu).
        num_channels: channels of the input, in the dataset's canonical order.
        d_model: width of the token representation.
        n_layers: transformer blocks.
        n_heads: attention heads; must divide d_model into even head sizes.
        dropout: dropout probability in attention and MLP outputs.
        max_position_embeddings: longest sequence (time steps) the model accepts.
        rope_theta: base of the rotary position encoding frequencies.
        token_corruption_cfg: ``{enabled, p, mode}``: while training, replace a share
            ``p`` of the input codes with random codes (mode ``random``). Off by default.
            The settings in force are saved in checkpoints.

    Input: int64 codes ``[B, C, T]``. Output: logits ``[B, C, T, vocab_size]``.
    ``forecast`` continues a context code by code.
    """

    def __init__(
        self,
        vocab_size: int = 256,
        num_channels: int = 1,
        d_model: int = 128,
        n_layers: int = 4,
        n_heads: int = 4,
        dropout: float = 0.0,
        max_position_embeddings: int = 1024,
        rope_theta: float = 10000.0,
        token_corruption_cfg: dict[str, Any] | None = None,
    ):
        super().__init__()
        if num_channels < 1:
            raise ValueError(f"num_channels must be at least 1, got {num_channels}")
        self.transformer = self.make_transformer(num_channels, vocab_size, d_model, n_layers, n_heads, dropout, max_position_embeddings, rope_theta)
        self.channel_embedding = nn.Embedding(num_channels, d_model)
        init_weights(self.channel_embedding)
        self.vocab_size = vocab_size
        self.num_channels = num_channels
        self.configured_token_corruption = TokenCorruption.from_mapping(token_corruption_cfg)
        self.token_corruption = self.configured_token_corruption

    @staticmethod
    def make_transformer(num_channels: int, *arguments: Any) -> CausalTransformer:
        """The shared transformer over each channel's sequence (``CausalTransformer``'s arguments after the channel count)."""
        return CausalTransformer(*arguments)

    @property
    def max_position_embeddings(self) -> int:
        return self.transformer.max_position_embeddings

    @property
    def rope_theta(self) -> float:
        return self.transformer.rope_theta

    def resize_context(
        self,
        input_shape: list[int] | None = None,
        rope_theta: float | None = None,
        max_position_embeddings: int | None = None,
    ) -> None:
        """Change the context the model accepts, keeping every learned weight.

        Args:
            input_shape: ``[channels, time]`` of the new windows; the channel count
                must stay the same, and the model will accept ``time`` steps.
            rope_theta: new base of the rotary frequencies.
            max_position_embeddings: new longest sequence.
        """
        if input_shape is not None:
            if len(input_shape) != 2:
                raise ValueError(f"input_shape must be [channels, time], got {input_shape}")
            channels, steps = input_shape
            if channels != self.num_channels:
                raise ValueError(
                    f"input_shape has {channels} channels but {type(self).__name__} has {self.num_channels} learned "
                    "channel embeddings; the channel count cannot change on resume"
                )
            if max_position_embeddings is not None and max_position_embeddings < steps:
                raise ValueError(f"max_position_embeddings ({max_position_embeddings}) is below input_shape's {steps} steps")
            max_position_embeddings = max_position_embeddings or max(self.max_position_embeddings, steps)
        self.transformer.set_context(
            self.max_position_embeddings if max_position_embeddings is None else max_position_embeddings,
            self.rope_theta if rope_theta is None else rope_theta,
        )

    def update_token_corruption_cfg(self, settings: dict[str, Any] | None) -> None:
        """Replace the token corruption settings; None restores those given to the constructor."""
        if settings is None:
            self.token_corruption = self.configured_token_corruption
        else:
            self.token_corruption = TokenCorruption.from_mapping(settings)

    def get_extra_state(self) -> dict[str, Any]:
        return {"token_corruption_cfg": asdict(self.token_corruption)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.token_corruption = TokenCorruption.from_mapping(state["token_corruption_cfg"])

    def corrupt(self, codes: torch.Tensor) -> torch.Tensor:
        """Training-time corruption of the input codes (identity in eval or when off)."""
        settings = self.token_corruption
        if not (self.training and settings.enabled and settings.p > 0):
            return codes
        replace = torch.rand(codes.shape, device=codes.device) < settings.p
        return torch.where(replace, torch.randint_like(codes, self.vocab_size), codes)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        batch, channels, time = codes.shape
        if channels != self.num_channels:
            raise ValueError(f"{type(self).__name__} was built for {self.num_channels} channels, got input with {channels}")
        channel_ids = torch.arange(channels, device=codes.device)
        x = self.transformer.token_embedding(self.corrupt(codes)) + self.channel_embedding(channel_ids)[None, :, None, :]
        logits = self.transformer(x.reshape(batch * channels, time, -1))
        return logits.view(batch, channels, time, self.vocab_size)

    def forecast(
        self,
        context: torch.Tensor,
        steps: int,
        sampling: SamplingConfig | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Continue int64 codes ``context`` ``[B, C, T]`` (T >= 1) by ``steps`` codes: int64 ``[B, C, steps]``.

        Every channel is continued as its own sequence, all ``B * C`` together, each code
        drawn by ``sampling`` (default ``SamplingConfig()``) through ``generator``. Past
        ``max_position_embeddings`` the window slides as ``CausalTransformer.rollout``
        describes. ``use_cache=False`` recomputes the window at every step (slow; the
        reference of the cached path). Runs in eval mode without autograd and leaves
        the training flag as it was.
        """
        check_code_context(self, context)
        sampling = sampling or SamplingConfig()
        batch, channels, time = context.shape
        with generating(self):
            # Row b * C + c of the flattened batch is channel c, as in forward.
            channel_vectors = self.channel_embedding(torch.arange(channels, device=context.device)).repeat(batch, 1)

            def embed(history: torch.Tensor, start: int) -> torch.Tensor:
                return self.transformer.token_embedding(history[:, start:]) + channel_vectors[:, None, :]

            codes = self.transformer.rollout(
                context.reshape(batch * channels, time).long(),
                steps,
                embed,
                lambda logits: sample_next(logits, sampling, generator),
                use_cache,
            )
        return codes.view(batch, channels, steps)

"""HFCausalLM: a Hugging Face ``transformers`` causal language model as the backbone of a next-code model.

Researchers swap architectures by config, as in the reference toolkit: ``model_type``
(llama, qwen2, gpt2, mistral, ... any causal LM ``transformers`` knows) and that
architecture's own config keys (``hidden_size``, ``num_hidden_layers``,
``num_attention_heads``, ...) build a randomly initialised model, with nothing
downloaded. ``pretrained_path`` loads a local folder instead: its ``config.json``, and
its weights where the folder has them.

Codes go in through the language model's own token embeddings; each channel is its own
sequence over time, told apart by a learned channel embedding added to the token's.
BPE text (TextDataLoader's ``(input_ids, attention_mask, channel_ids)``) goes in the
same way, one sequence per window, each token with its channel's embedding.
Generation uses the library's KV cache.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from brain_gen.config.schema import SamplingConfig
from brain_gen.models.sampling import check_code_context, generating, sample_next


def _transformers():
    try:
        import transformers
    except ImportError as exc:  # an optional dependency: only this model needs it
        raise ValueError("HFCausalLM needs the transformers package: pip install 'brain-gen[hf]'") from exc
    return transformers


class HFCausalLM(nn.Module):
    """Next-code logits ``[B, C, T, vocab_size]`` from int64 mu-law codes ``[B, C, T]`` through a ``transformers`` causal LM.

    With TextDataLoader batches, ``forward(input_ids, attention_mask, channel_ids)``
    (each ``[B, L]``) gives logits ``[B, L, vocab_size]`` instead, as TextGPT does.

    Args:
        model_type: the architecture (``llama``, ``qwen2``, ``gpt2``, ``mistral``, ...),
            built from ``hf_config`` with random weights. Not with ``pretrained_path``.
        num_channels: channels per window; each gets a learned embedding.
        pretrained_path: a local folder with ``config.json`` (and optionally weights) to
            start from instead; ``hf_config`` keys override its config.
        **hf_config: the architecture's config keys, as ``transformers`` names them
            (``vocab_size`` is the number of codes, mu + 1).

    The longest sequence is the architecture's ``max_position_embeddings`` (``n_positions``
    for gpt2).
    """

    def __init__(self, model_type: str | None = None, num_channels: int = 1, pretrained_path: str | None = None, **hf_config: Any):
        super().__init__()
        transformers = _transformers()
        if (model_type is None) == (pretrained_path is None):
            raise ValueError("give model_type (a new model from its config keys) or pretrained_path (a local folder), not both or neither")
        if pretrained_path is not None:
            folder = Path(pretrained_path)
            if not (folder / "config.json").is_file():
                raise ValueError(f"pretrained_path: {folder} has no config.json")
            config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True, **hf_config)
            has_weights = any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))
            self.lm = (
                transformers.AutoModelForCausalLM.from_pretrained(folder, config=config, local_files_only=True)
                if has_weights
                else transformers.AutoModelForCausalLM.from_config(config)
            )
        else:
            # Codes have no begin or end tokens; some architectures' defaults (gpt2's 50256)
            # would point outside a code vocabulary.
            hf_config = {"bos_token_id": None, "eos_token_id": None, **hf_config}
            try:
                config = transformers.AutoConfig.for_model(model_type, **hf_config)
            except (KeyError, ValueError) as exc:
                raise ValueError(f"model_type {model_type!r}: {exc}") from exc
            self.lm = transformers.AutoModelForCausalLM.from_config(config)
        # transformers 5 names the KV cache argument and output ``cache``, earlier ones ``past_key_values``.
        self._cache_name = "cache" if "cache" in inspect.signature(self.lm.forward).parameters else "past_key_values"
        self.num_channels = num_channels
        self.vocab_size = self.lm.config.vocab_size
        self.max_position_embeddings = getattr(self.lm.config, "max_position_embeddings", None) or getattr(self.lm.config, "n_positions")
        width = self.lm.get_input_embeddings().embedding_dim
        # One more row for text tokens of no channel (channel id -1: separators, padding).
        self.channel_embedding = nn.Embedding(num_channels + 1, width)
        nn.init.normal_(self.channel_embedding.weight, std=0.02)

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """Input embeddings ``[B * C, T, width]`` for codes ``[B, C, T]``: row ``b * C + c`` is channel c."""
        batch, channels, time = codes.shape
        tokens = self.lm.get_input_embeddings()(codes.reshape(batch * channels, time))
        channel_vectors = self.channel_embedding(torch.arange(channels, device=codes.device)).repeat(batch, 1)
        return tokens + channel_vectors[:, None, :]

    def embed_text(self, input_ids: torch.Tensor, channel_ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings ``[B, L, width]`` of BPE tokens ``[B, L]`` and their channel ids (-1: none)."""
        channels = torch.where(channel_ids < 0, self.num_channels, channel_ids)
        return self.lm.get_input_embeddings()(input_ids) + self.channel_embedding(channels)

    def forward(self, codes: torch.Tensor, attention_mask: torch.Tensor | None = None, channel_ids: torch.Tensor | None = None) -> torch.Tensor:
        if channel_ids is not None:  # a TextDataLoader batch
            return self.lm(inputs_embeds=self.embed_text(codes, channel_ids), attention_mask=attention_mask, use_cache=False).logits
        batch, channels, time = codes.shape
        if channels != self.num_channels:
            raise ValueError(f"HFCausalLM was built for {self.num_channels} channels, got input with {channels}")
        logits = self.lm(inputs_embeds=self.embed(codes), use_cache=False).logits
        return logits.view(batch, channels, time, -1)

    def forecast(
        self,
        context: torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        steps: int,
        sampling: SamplingConfig | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
        next_channel_ids: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Continue ``context`` by ``steps`` steps, drawn by ``sampling`` (default ``SamplingConfig()``) through ``generator``.

        Codes: ``context`` int64 ``[B, C, T]`` (T >= 1) gives int64 ``[B, C, steps]``.
        Text: ``context`` ``(input_ids, attention_mask, channel_ids)``, each ``[B, T]``
        without padding, gives token ids ``[B, steps]``; ``next_channel_ids(ids [B, T + t])
        -> [B]`` names the newest token's channel (None: no channel), as for TextGPT.

        The cached path runs the context once and then one step at a time through the
        library's KV cache. Past ``max_position_embeddings`` the model sees the last
        ``max_position_embeddings`` steps, recomputed at every step (no cache can slide
        positions). ``use_cache=False`` recomputes at every step (slow; the reference).
        """
        sampling = sampling or SamplingConfig()
        if isinstance(context, (tuple, list)):
            return self._continue_text(context, steps, sampling, generator, use_cache, next_channel_ids)
        check_code_context(self, context)
        batch, channels, time = context.shape
        with generating(self):
            codes = torch.empty(batch, channels, time + steps, dtype=torch.long, device=context.device)
            codes[:, :, :time] = context
            self._continue(
                time, steps, use_cache,
                lambda start, end: self.embed(codes[:, :, start:end]),
                lambda step, logits: codes[:, :, step].copy_(sample_next(logits, sampling, generator).view(batch, channels)),
            )
        return codes[:, :, time:].clone()

    def _continue_text(self, context, steps, sampling, generator, use_cache, next_channel_ids) -> torch.Tensor:
        input_ids, attention_mask, channel_ids = context
        if input_ids.dim() != 2 or input_ids.shape[1] < 1 or input_ids.shape != channel_ids.shape or not bool(attention_mask.bool().all()):
            raise ValueError("HFCausalLM.forecast expects unpadded input_ids, attention_mask and channel_ids of one shape [batch, time >= 1]")
        batch, time = input_ids.shape
        with generating(self):
            ids = torch.empty(batch, time + steps, dtype=torch.long, device=input_ids.device)
            channels = torch.full_like(ids, -1)
            ids[:, :time], channels[:, :time] = input_ids, channel_ids

            def draw(step: int, logits: torch.Tensor) -> None:
                ids[:, step] = sample_next(logits, sampling, generator)
                if next_channel_ids is not None:
                    channels[:, step] = next_channel_ids(ids[:, : step + 1])

            self._continue(time, steps, use_cache, lambda start, end: self.embed_text(ids[:, start:end], channels[:, start:end]), draw)
        return ids[:, time:].clone()

    def _continue(self, time: int, steps: int, use_cache: bool, embed: Callable[[int, int], torch.Tensor], draw: Callable[[int, torch.Tensor], Any]) -> None:
        """The generation loop of both kinds: ``embed(start, end)`` embeds steps ``start..end-1`` of the sequence
        as rows ``[N, end - start, width]``; ``draw(step, logits [N, V])`` fills in step ``step``."""
        limit = self.max_position_embeddings
        past = None
        for step in range(time, time + steps):
            if use_cache and step <= limit:
                # The first call fills the cache with the context; then one step each.
                start = 0 if past is None else step - 1
                output = self.lm(inputs_embeds=embed(start, step), use_cache=True, **{self._cache_name: past})
                past = getattr(output, self._cache_name)
            else:
                output = self.lm(inputs_embeds=embed(max(0, step - limit), step), use_cache=False)
            draw(step, output.logits[:, -1])

"""Generation with TextGPT: codes to BPE text, text continued token by token, text back to codes.

The text layout is BPEDataset's: each group of ``group_size`` time steps is one word
per channel, written ``[BOS] w0 [SEP] w1 ...`` with separators, or ``w0 w1 ...``
without. A generated group is well formed when it has one word per channel, each of
``group_size`` code characters. A malformed group is never a crash: it is counted,
and the channels hold their last values for its time steps.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from brain_gen.dataset.text import CODE_CHAR_OFFSET, NO_CHANNEL, ChannelGroups

# Generation runs in rounds until enough groups are decoded; each round asks for this
# much more than the context's tokens per group suggest.
TOKEN_MARGIN = 1.25
MAX_ROUNDS = 4


class ChannelTracker:
    """Which channel each newly generated token belongs to, from the text so far (for TextGPT.forecast)."""

    def __init__(self, collate: Any, channels: int, group_size: int):
        tokenizer, special = collate.tokenizer, collate.special_tokens
        self.use_separator = collate.options.use_separator
        self.token_chars = collate.token_chars
        self.sep = tokenizer.token_to_id(special["sep_token"])
        self.bos = tokenizer.token_to_id(special["bos_token"])
        self.channels, self.group_size = channels, group_size
        # The context ends on a group boundary: the next word is channel 0 of a new group.
        self.word, self.chars = 0, 0
        self.assigned: list[int] = []  # the channel id given to each generated token, in order

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        owner = self._owner(int(ids[0, -1]))
        self.assigned.append(owner)
        return torch.tensor([owner], device=ids.device)

    def _owner(self, token: int) -> int:
        if self.use_separator:
            if token == self.bos:
                self.word = 0
                return NO_CHANNEL
            if token == self.sep:
                self.word += 1
                return NO_CHANNEL
            return self.word if self.word < self.channels else NO_CHANNEL
        spelled = int(self.token_chars[token]) if token < len(self.token_chars) else 0
        if spelled == 0:
            return NO_CHANNEL
        owner = (self.chars // self.group_size) % self.channels
        self.chars += spelled
        return owner


def decode_groups(collate: Any, token_ids: list[int], channels: int, group_size: int, mu: int) -> tuple[list[np.ndarray | None], int]:
    """Generated tokens as groups of codes ``[channels, group_size]`` (None where malformed).

    Returns the groups and how many of them were well formed.
    """
    tokenizer, special = collate.tokenizer, collate.special_tokens
    pieces = [tokenizer.id_to_token(int(token)) or "" for token in token_ids]
    groups: list[list[str]] = []
    if collate.options.use_separator:
        current: list[str] | None = None
        for piece in pieces:
            if piece == special["bos_token"]:
                current = [""]
                groups.append(current)
            elif current is None:
                current = [piece]  # text before the first [BOS]: an unfinished group
                groups.append(current)
            elif piece == special["sep_token"]:
                current.append("")
            else:
                current[-1] += piece
    else:
        text = "".join(piece if piece not in special.values() else "\0" for piece in pieces)
        width = channels * group_size
        groups = [[text[start + k * group_size : start + (k + 1) * group_size] for k in range(channels)] for start in range(0, len(text) - width + 1, width)]
    decoded: list[np.ndarray | None] = []
    wellformed = 0
    for words in groups:
        codes = _word_codes(words, channels, group_size, mu)
        wellformed += codes is not None
        decoded.append(codes)
    return decoded, wellformed


def _word_codes(words: list[str], channels: int, group_size: int, mu: int) -> np.ndarray | None:
    if len(words) != channels or any(len(word) != group_size for word in words):
        return None
    codes = np.array([[ord(char) - CODE_CHAR_OFFSET for char in word] for word in words], dtype=np.int64)
    return codes if ((codes >= 0) & (codes <= mu)).all() else None


def forecast_text(model: Any, collate: Any, dataset: Any, codes: torch.Tensor, steps: int, sampling: Any, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, int]]:
    """Continue code contexts ``[B, C, Tc]`` by ``steps`` time steps through text; codes ``[B, C, steps]``.

    Each context is rendered as BPEDataset renders a window, tokenized, continued by
    ``model.forecast`` and decoded back. Also returns counts of generated and
    well-formed groups.
    """
    group_size, mu = dataset.group_size, dataset.mu
    batch, channels, _ = codes.shape
    needed = math.ceil(steps / group_size)
    output = np.zeros((batch, channels, needed * group_size), dtype=np.int64)
    totals = {"groups": 0, "wellformed_groups": 0}
    device = codes.device
    for row in range(batch):
        context = codes[row].cpu().numpy()
        # Whole groups only, so the continuation starts a new group.
        usable = (context.shape[1] // group_size) * group_size
        context = context[:, context.shape[1] - usable :]
        letters = dataset.alphabet[context]
        words = ["".join(chars) for chars in letters]
        sample = ChannelGroups([[word[start : start + group_size] for word in words] for start in range(0, usable, group_size)], list(range(channels)))
        ids, channel_ids = collate.tokenize(sample)
        tokens_per_group = len(ids) / max(len(sample), 1)
        generated: list[int] = []
        groups: list[np.ndarray | None] = []
        # One tracker for all rounds: each round continues the text where the last one stopped.
        tracker = ChannelTracker(collate, channels, group_size)
        for _ in range(MAX_ROUNDS):
            missing = needed - len(groups)
            if missing <= 0:
                break
            if generated:
                while len(tracker.assigned) < len(generated):
                    tracker(torch.tensor([generated[: len(tracker.assigned) + 1]]))
            prefix = np.concatenate([ids, np.asarray(generated, dtype=np.int64)])
            prefix_channels = np.concatenate([channel_ids, np.asarray(tracker.assigned[: len(generated)], dtype=np.int64)])
            count = int(math.ceil(missing * tokens_per_group * TOKEN_MARGIN)) + 4
            context_tensors = tuple(torch.as_tensor(array, dtype=torch.long, device=device)[None] for array in (prefix, np.ones_like(prefix), prefix_channels))
            new = model.forecast(context_tensors, count, sampling, generator, next_channel_ids=tracker)
            generated.extend(int(token) for token in new[0].tolist())
            groups, _ = decode_groups(collate, generated, channels, group_size, mu)
        groups = groups[:needed]
        wellformed = sum(group is not None for group in groups)
        totals["groups"] += needed
        totals["wellformed_groups"] += wellformed
        last = context[:, -1:]
        for index in range(needed):
            group = groups[index] if index < len(groups) else None
            block = group if group is not None else np.repeat(last, group_size, axis=1)
            output[row, :, index * group_size : (index + 1) * group_size] = block
            last = block[:, -1:]
    return torch.from_numpy(output[..., :steps]).to(device), totals

"""Text collate throughput against the raw tokenizer on the same strings.

Raw: ``Tokenizer.encode_batch`` on the rendered texts of a batch. Ours: the whole
TextDataLoader collate (render samples to text, encode the batch, pad, map every
token to its channel, shift targets). Throughput is tokens per second.
Target: our collate reaches at least 0.5x the raw throughput.
"""

from __future__ import annotations

import tempfile

import numpy as np

from benchmarks.common import Result, interleaved_best
from brain_gen.dataset.text import ChannelGroups, TextCollate, code_alphabet, train_text_tokenizer

BATCH, CHANNELS, STEPS, GROUP_SIZE, MU = 32, 64, 512, 8, 255


def synthetic_samples(count: int, rng: np.random.Generator) -> list[ChannelGroups]:
    """Smooth random walks in code space, rendered as groups like BPEDataset's."""
    alphabet = np.array(code_alphabet(MU))
    samples = []
    for _ in range(count):
        walk = np.cumsum(rng.integers(-2, 3, size=(CHANNELS, STEPS)), axis=1) + 128
        rows = ["".join(row) for row in alphabet[np.clip(walk, 0, MU)]]
        groups = [[row[start : start + GROUP_SIZE] for row in rows] for start in range(0, STEPS, GROUP_SIZE)]
        samples.append(ChannelGroups(groups, list(range(CHANNELS))))
    return samples


def main() -> list[Result]:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        train_text_tokenizer(synthetic_samples(64, rng), folder, code_alphabet(MU), vocab_size=2048)
        collate = TextCollate(tokenizer_path=str(folder))
        batch = synthetic_samples(BATCH, rng)
        texts = [collate.render(sample)[0] for sample in batch]
        tokenizer = collate.tokenizer
        tokens = sum(len(encoding.ids) for encoding in tokenizer.encode_batch(texts, add_special_tokens=False))
        times = interleaved_best(
            {"raw": lambda: tokenizer.encode_batch(texts, add_special_tokens=False), "collate": lambda: collate(batch)},
            rounds=3,
            repeats=3,
        )
    raw, ours = tokens / times["raw"], tokens / times["collate"]
    ratio = ours / raw
    print(f"{tokens} tokens per batch; raw encode_batch {raw:,.0f} tokens/s, text collate {ours:,.0f} tokens/s")
    print(f"text collate / raw encode_batch throughput ratio: {ratio:.3f} (target >= 0.5)")
    return [Result("bench_text_collate", "TextDataLoader collate tokens/s over raw encode_batch", f"{ratio:.2f}x", ">= 0.5x", ratio >= 0.5)]


if __name__ == "__main__":
    from benchmarks.common import print_table

    print_table(main())

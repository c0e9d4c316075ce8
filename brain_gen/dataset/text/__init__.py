"""Brain signals as text: mu-law codes become characters, BPE learns their patterns.

Each code c is written as the character ``chr(CODE_CHAR_OFFSET + c)``. A window is
cut into groups of ``group_size`` time steps; in each group, every channel becomes
one "word" of ``group_size`` characters. A Hugging Face ``tokenizers`` BPE model is
trained on these words, and TextDataLoader turns samples into token batches:

    [BOS] w(ch0) [SEP] w(ch1) [SEP] ... [BOS] w(ch0) [SEP] ...     (use_separator: true)
    w(ch0) w(ch1) ... w(ch0) w(ch1) ...                             (use_separator: false)
"""

from brain_gen.dataset.text.collate import NO_CHANNEL, TextCollate, TextDataLoader
from brain_gen.dataset.text.dataset import CODE_CHAR_OFFSET, BPEDataset, ChannelGroups, code_alphabet
from brain_gen.dataset.text.tokenizer import open_tokenizer, train_text_tokenizer

# Configs name these by import path (`brain_gen.dataset.text:TextDataLoader`); each lives in one submodule.
__all__ = [
    "BPEDataset",
    "CODE_CHAR_OFFSET",
    "ChannelGroups",
    "NO_CHANNEL",
    "TextCollate",
    "TextDataLoader",
    "code_alphabet",
    "open_tokenizer",
    "train_text_tokenizer",
]

"""Reading and training the BPE tokenizer of signal text (Hugging Face ``tokenizers``), in the folder
layout that ``transformers.AutoTokenizer`` also loads."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from brain_gen.config.errors import ConfigError
from brain_gen.config.schema import DEFAULT_SPECIAL_TOKENS

SPECIAL_TOKEN_ROLES = ("pad_token", "sep_token", "bos_token", "unk_token")
TOKENIZER_FILE = "tokenizer.json"


def load_special_tokens(tokenizer_dir: Path) -> dict[str, str]:
    config_path = tokenizer_dir / "tokenizer_config.json"
    if not config_path.is_file():
        return dict(DEFAULT_SPECIAL_TOKENS)
    config = json.loads(config_path.read_text())
    return {role: config.get(role, default) for role, default in DEFAULT_SPECIAL_TOKENS.items()}


def open_tokenizer(tokenizer_path: str | Path):
    """The tokenizer in ``<tokenizer_path>/tokenizer/`` and its special tokens by role."""
    from tokenizers import Tokenizer

    folder = Path(tokenizer_path) / "tokenizer"
    if not Path(tokenizer_path).is_dir():
        raise ConfigError(f"dataloader.tokenizer_path: folder not found: {tokenizer_path}; train one with brain-gen tokenizer-text")
    if not (folder / TOKENIZER_FILE).is_file():
        raise ConfigError(
            f"dataloader.tokenizer_path: {folder / TOKENIZER_FILE} not found; the folder must contain tokenizer/ "
            "as written by brain-gen tokenizer-text"
        )
    try:
        tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
    except Exception as exc:  # the library raises its own exception types
        raise ConfigError(f"dataloader.tokenizer_path: cannot read {folder / TOKENIZER_FILE} ({exc})") from exc
    return tokenizer, load_special_tokens(folder)


def train_text_tokenizer(
    samples: Iterable[list[list[str]]],
    out_dir: str | Path,
    alphabet: list[str],
    vocab_size: int = 4096,
    min_frequency: int = 2,
    special_tokens: dict[str, str] | None = None,
) -> Path:
    """Train a BPE tokenizer on the channel words of ``samples``; write ``<out_dir>/tokenizer/``.

    Besides ``tokenizer.json`` it writes ``tokenizer_config.json`` and
    ``special_tokens_map.json``, so that ``transformers.AutoTokenizer`` can load the folder.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    special = {**DEFAULT_SPECIAL_TOKENS, **(special_tokens or {})}
    if len(set(special.values())) != len(special):
        raise ConfigError(f"tokenizer-text: the special tokens must differ from each other, got {special}")
    for role, token in special.items():
        if not token or any(char.isspace() for char in token) or token in alphabet:
            raise ConfigError(f"tokenizer-text --{role.replace('_', '-')}: {token!r} must be non-empty, without spaces, and not a code character")
    folder = Path(out_dir) / "tokenizer"
    if folder.exists():
        raise ConfigError(f"tokenizer-text --out: {folder} already exists; choose a new folder (nothing is overwritten)")
    tokenizer = Tokenizer(models.BPE(unk_token=special["unk_token"]))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[special[role] for role in SPECIAL_TOKEN_ROLES],
        initial_alphabet=alphabet,
        show_progress=False,
    )

    def words():
        for sample in samples:
            for group in sample:
                yield " ".join(group)

    tokenizer.train_from_iterator(words(), trainer)
    folder.mkdir(parents=True)
    tokenizer.save(str(folder / TOKENIZER_FILE))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 1_000_000_000, **special}, indent=2)
    )
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    return folder

"""Typed errors for bad user input. Only the CLI turns them into exit codes."""

from __future__ import annotations


class BrainGenError(Exception):
    """Bad input from the user: a config key, a path or a data file.

    The message is one line that names the key or file and says what to do.
    """

    def __init__(self, message: str):
        # Collapse whitespace so the CLI can always print exactly one line.
        super().__init__(" ".join(str(message).split()))


class ConfigError(BrainGenError):
    """A config key is missing, unknown, of the wrong type or inconsistent.

    Takes one message, or the list of every problem a check pass found (each one
    line naming its key): ``problems`` keeps them apart, so that the CLI prints one
    line per problem; the message joins them with "; ".
    """

    def __init__(self, problems: str | list[str]):
        if isinstance(problems, str):
            problems = [problems]
        self.problems = [" ".join(str(problem).split()) for problem in problems]
        super().__init__("; ".join(self.problems))


def raise_problems(problems: list[str]) -> None:
    """Raise one ConfigError holding every problem, if there is any."""
    if problems:
        raise ConfigError(problems)


class DataError(BrainGenError):
    """A dataset file is missing, corrupt or inconsistent with its metadata."""


def did_you_mean(name: str, choices, n: int = 1) -> str:
    """A ' (did you mean X?)' hint naming the closest choices (up to ``n``), or '' when none is close."""
    import difflib

    matches = difflib.get_close_matches(str(name), [str(choice) for choice in choices], n=n, cutoff=0.6)
    if not matches:
        return ""
    listed = matches[0] if len(matches) == 1 else f"{', '.join(matches[:-1])} or {matches[-1]}"
    return f" (did you mean {listed}?)"


class CheckpointWriteError(RuntimeError):
    """Writing a checkpoint failed (a full disk, a lost mount): training stopped, the previous checkpoints are intact."""


class NonFiniteTraining(BrainGenError):
    """Training stopped at the first step whose loss or gradients were not finite, before the weights changed."""

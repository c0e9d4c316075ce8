"""Closed-form reference scores for next-code models: where the floor of linear prediction is.

``brain-gen baselines CONFIG`` answers "is my model better than linear prediction?" on
the config's own splits and code space, with no training loop:

- ``unigram``: one distribution over codes for every position, the training split's
  code frequencies with one added count per code (so that a code unseen in training
  costs a finite amount);
- ``AR(p)``: each channel predicted from its own p previous values, by least squares;
- ``VAR(p)``: each channel predicted from the p previous values of every channel.

How a linear predictor gets a cross-entropy. The predictors work on the values the
codes stand for (mu-law decoded, as a model's input codes carry nothing more). A
prediction m with the residual standard deviation s of its channel (fitted on the
training split) is a Gaussian over values; the probability of code k is the Gaussian
mass of the values that encode to k, between the two decision boundaries around k
(code 0 and code mu reach out to minus and plus infinity, where clipping puts every
larger value). The score is minus the log of that probability at the true code.

Scored exactly as ``val/loss``: every target position of every window of the split
(the next code after each input position), in nats per code, averaged over all
scored positions; channels a session lacks are not scored. A window is all a model
sees, so lags from before a window's start count as zero (the data are z-scored, and
the fit sees the same zeros). Least squares accumulates the normal equations window by
window, in float64, with an intercept: AR on every training window where the channel
is present, VAR on the training windows where every channel is (one shared design).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import log_ndtr

from brain_gen.config.errors import ConfigError
from brain_gen.dataset.datasets import IGNORE_INDEX, ChunkDataset
from brain_gen.dataset.mulaw import mu_law_decode

RESULT_FILE = "baselines.json"


@dataclass
class Window:
    """One window of a split: decoded values ``[C, L]``, codes ``[C, L]`` and which channels are scored ``[C]``."""

    values: np.ndarray
    codes: np.ndarray
    scored: np.ndarray


class Windows:
    """Every window of a ChunkDataset split, in its order, as the model sees it; read again at each pass.

    Not kept in memory: a split of 10 s MEG windows holds gigabytes in float64, and every
    fit and score is one pass over it.
    """

    def __init__(self, dataset: ChunkDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self):
        dataset = self.dataset
        for index in range(len(dataset)):
            inputs, targets = dataset[index]
            scored = (targets != IGNORE_INDEX).all(dim=1)
            codes = torch.cat([inputs, targets[:, -1:]], dim=1)
            codes[~scored] = 0
            values = mu_law_decode(codes, dataset.mu, dataset.max_val).double().numpy()
            values[~scored.numpy()] = 0.0  # a missing channel is no one's input either
            yield Window(values, codes.numpy(), scored.numpy())


def lagged(values: np.ndarray, order: int) -> np.ndarray:
    """``[C, L-1, order]``: for each target position t = 1..L-1, the values at t-1 .. t-order (zero before the window)."""
    channels, length = values.shape
    padded = np.concatenate([np.zeros((channels, order)), values], axis=1)
    # The value at t - lag sits at padded index t - lag + order; t runs over 1 .. L-1.
    return np.stack([padded[:, order - lag + 1 : order - lag + length] for lag in range(1, order + 1)], axis=-1)


def own_lags(values: np.ndarray, order: int) -> np.ndarray:
    """AR regressors ``[C, L-1, 1 + order]``: an intercept and the channel's own lags."""
    lags = lagged(values, order)
    return np.concatenate([np.ones(lags.shape[:2] + (1,)), lags], axis=-1)


def all_lags(values: np.ndarray, order: int) -> np.ndarray:
    """VAR regressors ``[L-1, 1 + C x order]``: an intercept and the lags of every channel, shared by all channels."""
    lags = lagged(values, order)  # [C, T, p]
    channels, steps, _ = lags.shape
    return np.concatenate([np.ones((steps, 1)), lags.transpose(1, 0, 2).reshape(steps, channels * order)], axis=1)


@dataclass
class LinearPredictor:
    """Least-squares weights, ``[C, F]`` (AR: each channel its own) or ``[F, C]`` (VAR: one design for all),
    and each channel's residual standard deviation ``[C]``."""

    order: int
    mixing: bool
    weights: np.ndarray
    scale: np.ndarray

    @property
    def name(self) -> str:
        return f"{'VAR' if self.mixing else 'AR'}({self.order})"

    @classmethod
    def fit_ar(cls, windows: Windows, order: int) -> LinearPredictor:
        """Each channel from its own lags, on every window where the channel is present."""
        channels = windows.dataset.num_channels
        gram, cross = np.zeros((channels, order + 1, order + 1)), np.zeros((channels, order + 1))
        squares, counts = np.zeros(channels), np.zeros(channels)
        for window in windows:
            features = own_lags(window.values, order) * window.scored[:, None, None]
            targets = window.values[:, 1:] * window.scored[:, None]
            gram += np.einsum("ctf,ctg->cfg", features, features)
            cross += np.einsum("ctf,ct->cf", features, targets)
            squares += (targets**2).sum(axis=1)
            counts += window.scored * targets.shape[1]
        if not counts.all():
            raise ConfigError("datasplitter: a channel is missing from every training window; the baselines cannot fit it")
        weights = np.stack([np.linalg.lstsq(g, c, rcond=None)[0] for g, c in zip(gram, cross)])
        # Residual sum of squares from the normal equations: y'y - 2 w'X'y + w'X'Xw.
        residual = squares - 2 * np.einsum("cf,cf->c", weights, cross) + np.einsum("cf,cfg,cg->c", weights, gram, weights)
        return cls(order, False, weights, _scale(residual, counts))

    @classmethod
    def fit_var(cls, windows: Windows, order: int) -> LinearPredictor:
        """Every channel from the lags of all, on the windows where every channel is present (one shared design)."""
        channels = windows.dataset.num_channels
        features = 1 + channels * order
        gram, cross = np.zeros((features, features)), np.zeros((features, channels))
        squares, counts = np.zeros(channels), 0
        for window in windows:
            if not window.scored.all():
                continue
            design = all_lags(window.values, order)
            targets = window.values[:, 1:].T  # [T, C]
            gram += design.T @ design
            cross += design.T @ targets
            squares += (targets**2).sum(axis=0)
            counts += len(targets)
        if not counts:
            raise ConfigError("datasplitter: no training window has every channel; VAR baselines need some")
        weights = np.linalg.lstsq(gram, cross, rcond=None)[0]  # [F, C]
        residual = squares - 2 * np.einsum("fc,fc->c", weights, cross) + np.einsum("fc,fg,gc->c", weights, gram, weights)
        return cls(order, True, weights, _scale(residual, np.full(channels, counts)))

    def means(self, window: Window) -> np.ndarray:
        """Predicted values ``[C, L-1]`` for the window's target positions."""
        if self.mixing:
            return (all_lags(window.values, self.order) @ self.weights).T
        return np.einsum("ctf,cf->ct", own_lags(window.values, self.order), self.weights)


def _scale(residual: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Residual standard deviations (maximum likelihood), kept above zero for a channel predicted exactly."""
    return np.maximum(np.sqrt(np.maximum(residual, 0.0) / counts), 1e-12)


def code_edges(mu: int, max_val: float) -> np.ndarray:
    """The ``mu + 2`` value boundaries of the codes: code k holds the values in ``[edges[k], edges[k + 1])``."""
    levels = np.arange(1, mu + 1, dtype=np.float64)
    companded = 2 * (levels - 0.5) / mu - 1  # where rounding moves from code k - 1 to code k
    inner = np.sign(companded) * np.expm1(np.abs(companded) * math.log1p(mu)) / mu * max_val
    return np.concatenate([[-np.inf], inner, [np.inf]])


def log_interval_mass(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """log(Phi(high) - Phi(low)) for standard-normal bounds low < high, stable in both tails."""
    # Mirror the upper tail onto the lower one, where log_ndtr keeps its precision.
    upper = low > 0
    a = np.where(upper, -high, low)
    b = np.where(upper, -low, high)
    log_b, log_a = log_ndtr(b), log_ndtr(a)
    return log_b + np.log1p(-np.exp(log_a - log_b))


def gaussian_code_nats(predictor: LinearPredictor, windows: Windows, edges: np.ndarray) -> float:
    """Mean cross-entropy, in nats per code, of the predictor's Gaussian over the scored codes."""
    total, count = 0.0, 0
    for window in windows:
        means = predictor.means(window)
        codes = window.codes[:, 1:]
        scale = predictor.scale[:, None]
        low = (edges[codes] - means) / scale
        high = (edges[codes + 1] - means) / scale
        nats = -log_interval_mass(low, high)
        total += float(nats[window.scored].sum())
        count += int(window.scored.sum()) * codes.shape[1]
    return total / count


def unigram_nats(train: Windows, scored: Windows, vocabulary: int) -> float:
    """Cross-entropy of the training split's code frequencies (one added count per code) on ``scored``."""
    counts = np.ones(vocabulary)
    for window in train:
        np.add.at(counts, window.codes[window.scored][:, 1:].ravel(), 1)
    log_p = np.log(counts / counts.sum())
    total, count = 0.0, 0
    for window in scored:
        targets = window.codes[window.scored][:, 1:]
        total += float(-log_p[targets].sum())
        count += targets.size
    return total / count


def compute_baselines(datasets: dict[str, Any], ar_orders: tuple[int, ...], var_orders: tuple[int, ...]) -> dict[str, Any]:
    """Scores of every baseline on the validation and test splits: ``{"scores": {split: {name: nats}}, ...}``."""
    train_set = datasets.get("train")
    if not isinstance(train_set, ChunkDataset):
        kind = type(train_set).__name__ if train_set is not None else "none"
        raise ConfigError(f"datasplitter.dataset_class: baselines score mu-law codes and need ChunkDataset, got {kind}")
    train = Windows(train_set)
    if not len(train):
        raise ConfigError("datasplitter: the training split has no windows to fit the baselines on")
    scored_splits = {name: Windows(datasets[name]) for name in ("val", "test") if name in datasets and len(datasets[name])}
    if not scored_splits:
        raise ConfigError("datasplitter.val_ratio: baselines need a validation or test split to score on; both are empty")
    edges = code_edges(train_set.mu, train_set.max_val)
    predictors = [LinearPredictor.fit_ar(train, order) for order in ar_orders]
    predictors += [LinearPredictor.fit_var(train, order) for order in var_orders]
    scores = {}
    for split, windows in scored_splits.items():
        scores[split] = {"unigram": unigram_nats(train, windows, train_set.vocab_size)}
        for predictor in predictors:
            scores[split][predictor.name] = gaussian_code_nats(predictor, windows, edges)
    return {
        "unit": "nats per code, scored as val/loss",
        "mu": train_set.mu,
        "max_val": train_set.max_val,
        "windows": {"train": len(train), **{split: len(windows) for split, windows in scored_splits.items()}},
        "scores": scores,
    }


def strongest(result: dict[str, Any], split: str = "val") -> tuple[str, float] | None:
    """The lowest-scoring baseline of a split, as ``(name, nats)``; None if the split was not scored."""
    scores = result.get("scores", {}).get(split)
    if not scores:
        return None
    name = min(scores, key=scores.get)
    return name, scores[name]


def write_baselines(result: dict[str, Any], save_dir: Path, overwrite: bool = False) -> Path:
    """``save_dir/baselines.json``; an earlier file is kept unless ``overwrite``."""
    path = Path(save_dir) / RESULT_FILE
    if path.exists() and not overwrite:
        raise ConfigError(f"{path}: baselines of an earlier run are there; remove the file or pass --overwrite")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def read_baselines(save_dir: Path) -> dict[str, Any] | None:
    """The baselines written into ``save_dir``, or None."""
    path = Path(save_dir) / RESULT_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def table(result: dict[str, Any]) -> str:
    """The scores as a small text table, one row per baseline, one column per split."""
    splits = list(result["scores"])
    names = list(result["scores"][splits[0]])
    rows = [f"{'baseline':10s}" + "".join(f"{split:>10s}" for split in splits)]
    rows += [f"{name:10s}" + "".join(f"{result['scores'][split][name]:10.4f}" for split in splits) for name in names]
    return "\n".join(rows)

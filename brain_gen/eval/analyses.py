"""Distances between generated and real continuations of brain signals, with a real-vs-real control.

An evaluation hands a model real contexts and lets it continue each one.
:func:`compare_continuations` compares every generated continuation with the real
continuation of the same context, in signal units, on the continuation only.

Each distance d(generated_i, real_i) comes with a control, the same distance between
two real continuations: d(real_j, real_i) with j = (i + 1) % n_contexts.
``<name>_ratio`` is generated / control, so 1.0 reads "as close to the real
continuation as another real recording is". docs/evaluation.md gives every formula.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import signal, stats

BANDS = {"delta": (1.0, 4.0), "theta": (4.0, 8.0), "alpha": (8.0, 13.0), "beta": (13.0, 30.0), "gamma": (30.0, 45.0)}
ANALYSES = ("spectral", "spatial", "amplitude", "horizon")
# The distances the horizon analysis follows window by window.
HORIZON_DISTANCES = ("psd_distance_db", "cov_corr", "kurtosis_diff", "wasserstein")

PSD_FMIN_HZ = 1.0
PSD_FMAX_HZ = 100.0
BANDPOWER_FMAX_HZ = 45.0
# Welch segments of one second give 1 Hz bins, fine enough to resolve delta (1-4 Hz).
WELCH_SECONDS = 1.0
# log10(0) is guarded by a floor this far below the largest real PSD value: a floor
# relative to the data keeps a dead (all-zero) output at a large but bounded distance
# whatever the signal units (MEG in tesla has PSDs near 1e-26).
PSD_FLOOR_DB_BELOW_PEAK = 120.0

ONE_CONTEXT = "the control needs at least two contexts"
NO_SHARED_CHANNEL = "no two consecutive contexts share a channel"
NOT_FINITE = "the generated continuation holds NaN or inf"


@dataclass
class Comparison:
    """What :func:`compare_continuations` found: scalars, why some are absent, and the arrays the plots draw.

    Arrays are None (series dicts empty) when their analysis was not asked for or could
    not be computed. PSDs are in dB (10 log10 of signal unit**2 / Hz), averaged over
    present channels (and rollouts for the generated one).
    """

    sfreq: float
    analyses: tuple[str, ...]
    scalars: dict[str, float] = field(default_factory=dict)
    absent: dict[str, str] = field(default_factory=dict)
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    freqs: np.ndarray | None = None  # [F] Hz, the bins within [1 Hz, min(100 Hz, Nyquist))
    psd_generated_db: np.ndarray | None = None  # [n_contexts, F]
    psd_real_db: np.ndarray | None = None  # [n_contexts, F]
    psd_control_db: np.ndarray | None = None  # [n_contexts, F]: real continuation j = (i + 1) % n
    psd_distance_by_freq_generated: np.ndarray | None = None  # [n_contexts, F] dB, RMS over channels
    psd_distance_by_freq_control: np.ndarray | None = None  # [n_contexts, F] dB
    corr_real: np.ndarray | None = None  # [C, C], mean over contexts; NaN for a pair never present
    corr_generated: np.ndarray | None = None  # [C, C], mean over contexts and rollouts
    horizon_times_s: np.ndarray | None = None  # [W] window centres, seconds after the context ends
    horizon_generated: dict[str, np.ndarray] = field(default_factory=dict)  # distance -> [W]
    horizon_control: dict[str, np.ndarray] = field(default_factory=dict)  # distance -> [W]

    def to_json(self) -> dict[str, Any]:
        """A JSON-serializable summary: scalars, absent metrics, settings and horizon series (NaN -> None)."""
        horizon = None
        if self.horizon_times_s is not None:
            horizon = {
                "times_s": _json_list(self.horizon_times_s),
                "generated": {name: _json_list(series) for name, series in self.horizon_generated.items()},
                "control": {name: _json_list(series) for name, series in self.horizon_control.items()},
            }
        return {
            "sfreq": self.sfreq,
            "analyses": list(self.analyses),
            "scalars": dict(self.scalars),
            "absent": dict(self.absent),
            "settings": self.settings,
            "horizon": horizon,
        }


def compare_continuations(
    generated: np.ndarray,
    real: np.ndarray,
    sfreq: float,
    analyses: tuple[str, ...] | list[str] = ANALYSES,
    horizon_window_s: float = 0.5,
    present: np.ndarray | None = None,
) -> Comparison:
    """Compare generated continuations with the real ones and with a real-vs-real control.

    Parameters
    ----------
    generated : array, shape (n_contexts, n_rollouts, n_channels, n_times)
        Generated continuations (context excluded), in signal units.
    real : array, shape (n_contexts, n_channels, n_times)
        The real continuation of each context.
    sfreq : float
        Sampling frequency in Hz.
    analyses : sequence of str
        Which of :data:`ANALYSES` to compute; the others are skipped entirely.
    horizon_window_s : float
        Length in seconds of the consecutive, non-overlapping windows of the horizon analysis.
    present : bool array, shape (n_contexts, n_channels) | None
        False for channels a context's session lacks: they are left out of every
        statistic of that context (their values are never read). None means all present.
    """
    generated, real, present = _validated_inputs(generated, real, present)
    analyses = _validated_analyses(analyses)
    if not sfreq > 0:
        raise ValueError(f"sfreq must be positive, got {sfreq}")
    if "horizon" in analyses and not horizon_window_s > 0:
        raise ValueError(f"horizon_window_s must be positive, got {horizon_window_s}")
    sfreq = float(sfreq)
    comparison = Comparison(sfreq=sfreq, analyses=analyses)
    generated_finite = bool(np.isfinite(generated).all())
    pairs = _ControlPairs(present)
    if "spectral" in analyses:
        _spectral(comparison, generated, real, present, pairs, generated_finite)
    if "spatial" in analyses:
        _spatial(comparison, generated, real, present, pairs, generated_finite)
    if "amplitude" in analyses:
        for name, distance in (("kurtosis_diff", _kurtosis_diff_values), ("wasserstein", _wasserstein_values)):
            generated_values = distance(generated, real, present, sfreq) if generated_finite else None
            control_values = distance(*pairs.control(real), sfreq) if pairs.available else None
            _record(comparison, name, generated_values, control_values, pairs.why_absent)
        comparison.settings["amplitude"] = {"kurtosis": "excess (fisher=True, biased)", "wasserstein": "per channel, standardized"}
    if "horizon" in analyses:
        _horizon(comparison, generated, real, present, pairs, generated_finite, horizon_window_s)
    return comparison


class _ControlPairs:
    """The real-vs-real pairs: context i against the real continuation of j = (i + 1) % n."""

    def __init__(self, present: np.ndarray):
        n_contexts = present.shape[0]
        self.next_context = (np.arange(n_contexts) + 1) % n_contexts
        # A channel takes part in pair (i, j) only if both sessions have it.
        self.present = present & present[self.next_context]
        self.why_absent = ONE_CONTEXT if n_contexts < 2 else None if self.present.any() else NO_SHARED_CHANNEL
        self.available = self.why_absent is None

    def control(self, real: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(real_j as a one-rollout 'generated' array, real_i, channels present in both)."""
        return real[self.next_context][:, None], real, self.present


# A distance takes (generated [n, R, C, T], real [n, C, T], present [n, C], sfreq) and
# returns its value per (context, rollout) [n, R] with NaN where it is undefined, plus
# the reason to report if it is undefined everywhere.
Values = tuple[np.ndarray, str]


def _spectral(comparison: Comparison, generated, real, present, pairs: _ControlPairs, generated_finite: bool) -> None:
    """psd_distance_db and band powers of the whole continuation, and the spectra psd_figure draws."""
    sfreq = comparison.sfreq
    nperseg = _welch_nperseg(real.shape[-1], sfreq)
    freqs, psd_real = signal.welch(real, fs=sfreq, nperseg=nperseg, axis=-1)
    _, psd_generated = signal.welch(generated, fs=sfreq, nperseg=nperseg, axis=-1)
    floor = _psd_floor(psd_real, present)
    db_real = 10 * np.log10(np.maximum(psd_real, floor))
    db_generated = 10 * np.log10(np.maximum(psd_generated, floor))
    fmax = min(PSD_FMAX_HZ, sfreq / 2)
    in_range = _distance_bins(freqs, sfreq)
    comparison.settings["spectral"] = {
        "method": "scipy.signal.welch, hann window, 50 % overlap",
        "welch_nperseg": nperseg,
        "frequency_resolution_hz": sfreq / nperseg,
        "fmin_hz": PSD_FMIN_HZ,
        "fmax_hz": fmax,
        "nyquist_bin": "left out",
        "psd_floor_db_below_peak": PSD_FLOOR_DB_BELOW_PEAK,
    }
    if not in_range.any():
        _record_absent(comparison, "psd_distance_db", f"no Welch frequency bin in [{PSD_FMIN_HZ:g}, {fmax:g}] Hz")
    else:
        db_real, db_generated = db_real[..., in_range], db_generated[..., in_range]
        comparison.freqs = freqs[in_range]
        comparison.psd_real_db = _masked_channel_mean(db_real[:, None], present)[:, 0]
        generated_values = control_values = None
        if generated_finite:
            values, by_freq = _psd_distance(db_generated, db_real, present)
            generated_values = (values, "")
            comparison.psd_generated_db = _masked_channel_mean(db_generated, present).mean(axis=1)
            comparison.psd_distance_by_freq_generated = by_freq.mean(axis=1)
        if pairs.available:
            db_next, _, pair_present = pairs.control(db_real)
            values, by_freq = _psd_distance(db_next, db_real, pair_present)
            control_values = (values, NO_SHARED_CHANNEL)
            comparison.psd_control_db = _masked_channel_mean(db_next, pair_present)[:, 0]
            comparison.psd_distance_by_freq_control = by_freq[:, 0]
        _record(comparison, "psd_distance_db", generated_values, control_values, pairs.why_absent)
    _bandpower(comparison, freqs, psd_generated, psd_real, present, pairs, generated_finite)


def _bandpower(comparison: Comparison, freqs, psd_generated, psd_real, present, pairs: _ControlPairs, generated_finite: bool) -> None:
    """bandpower_<band> from linear Welch PSDs (n, R, C, F) and (n, C, F) on bins freqs (Hz)."""
    nyquist = comparison.sfreq / 2
    total_fmax = min(BANDPOWER_FMAX_HZ, nyquist)
    # Half-open intervals [low, high) so neighbouring bands never share a bin; this also
    # leaves out the Nyquist bin, which a one-sided Welch estimate does not double.
    total = (freqs >= PSD_FMIN_HZ) & (freqs < total_fmax)
    total_real = psd_real[..., total].sum(axis=-1)
    total_generated = psd_generated[..., total].sum(axis=-1)
    resolution = freqs[1] - freqs[0] if freqs.size > 1 else comparison.sfreq
    used = {}
    for band, (low, high) in BANDS.items():
        name = f"bandpower_{band}"
        if low >= nyquist:
            _record_absent(comparison, name, f"the {band} band ({low:g}-{high:g} Hz) lies above Nyquist ({nyquist:g} Hz)")
            continue
        high = min(high, nyquist)
        in_band = (freqs >= low) & (freqs < high)
        if not in_band.any():
            _record_absent(comparison, name, f"no Welch bin in {low:g}-{high:g} Hz at {resolution:g} Hz resolution")
            continue
        used[band] = [low, high]
        relative_real = _relative(psd_real[..., in_band].sum(axis=-1), total_real)  # [n, C]
        generated_values = control_values = None
        if generated_finite:
            relative_generated = _relative(psd_generated[..., in_band].sum(axis=-1), total_generated)  # [n, R, C]
            difference = np.abs(relative_generated - relative_real[:, None])
            generated_values = (_masked_channel_mean(difference, present), "")
        if pairs.available:
            relative_next, _, pair_present = pairs.control(relative_real)
            difference = np.abs(relative_next - relative_real[:, None])
            control_values = (_masked_channel_mean(difference, pair_present), NO_SHARED_CHANNEL)
        _record(comparison, name, generated_values, control_values, pairs.why_absent)
    comparison.settings["bandpower"] = {"bands_hz": used, "total_range_hz": [PSD_FMIN_HZ, total_fmax], "intervals": "[low, high)"}


def _relative(band_power: np.ndarray, total_power: np.ndarray) -> np.ndarray:
    """Band power over total power; 0 for a channel with no power at all (a constant one)."""
    return np.divide(band_power, total_power, out=np.zeros_like(band_power), where=total_power > 0)


def _spatial(comparison: Comparison, generated, real, present, pairs: _ControlPairs, generated_finite: bool) -> None:
    """cov_corr, its control, and the mean correlation matrices covariance_figure draws."""
    generated_values = None
    if generated_finite:
        values, reason, comparison.corr_real, comparison.corr_generated = _cov_corr(generated, real, present)
        generated_values = (values, reason)
    else:
        comparison.corr_real = _cov_corr(real[:, None], real, present)[2]
    control_values = None
    if pairs.available:
        values, reason, _, _ = _cov_corr(*pairs.control(real))
        control_values = (values, reason)
    _record(comparison, "cov_corr", generated_values, control_values, pairs.why_absent)
    comparison.settings["spatial"] = {"correlation": "np.corrcoef over time; a constant channel correlates 0 with every other",
                                      "entries": "upper triangle without the diagonal"}


def _cov_corr(generated, real, present) -> tuple[np.ndarray, str, np.ndarray, np.ndarray]:
    """Per (context, rollout) Pearson r between off-diagonal correlations, its reason if undefined, and the mean matrices.

    The matrices are the real and generated channel correlations, shape (C, C), averaged
    over the contexts (and rollouts) where both channels of a pair are present.
    """
    n_contexts, n_rollouts, n_channels, _ = generated.shape
    values = np.full((n_contexts, n_rollouts), np.nan)
    sum_real = np.zeros((n_channels, n_channels))
    sum_generated = np.zeros((n_channels, n_channels))
    count = np.zeros((n_channels, n_channels))
    # One context at a time: all contexts at once would hold n * R * C * C floats, too
    # much for MEG (306 channels).
    for context in range(n_contexts):
        picks = np.flatnonzero(present[context])
        corr_real = _correlations(real[context][picks])  # [P, P]
        corr_generated = _correlations(generated[context][:, picks])  # [R, P, P]
        block = np.ix_(picks, picks)
        sum_real[block] += corr_real
        sum_generated[block] += corr_generated.mean(axis=0)
        count[block] += 1
        if len(picks) >= 3:
            upper = np.triu_indices(len(picks), k=1)
            values[context] = _pearson(corr_generated[:, upper[0], upper[1]], corr_real[upper])
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_real, mean_generated = sum_real / count, sum_generated / count
    most_channels = int(present.sum(axis=1).max())
    if most_channels == 1:
        reason = "one channel has no off-diagonal correlations"
    elif most_channels == 2:
        reason = "two channels have a single off-diagonal correlation; a Pearson correlation needs at least two"
    else:
        reason = "the off-diagonal correlations are constant, so their Pearson correlation is undefined"
    return values, reason, mean_real, mean_generated


def _correlations(x: np.ndarray) -> np.ndarray:
    """Channel correlation matrices as np.corrcoef computes them, for x of shape (..., C, T) -> (..., C, C).

    np.corrcoef gives NaN for a constant channel; here it correlates 0 with the others
    (and 1 with itself), so one flat channel does not void a whole context.
    """
    standardized = _standardized(x)
    corr = standardized @ np.swapaxes(standardized, -1, -2) / x.shape[-1]
    diagonal = np.arange(x.shape[-2])
    corr[..., diagonal, diagonal] = 1.0
    return np.clip(corr, -1.0, 1.0)


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r between each row of a (R, P) and b (P,); NaN where either is constant."""
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean()
    denominator = np.sqrt((a**2).sum(axis=-1) * (b**2).sum())
    numerator = (a * b).sum(axis=-1)
    return np.divide(numerator, denominator, out=np.full(numerator.shape, np.nan), where=denominator > 0)


def _kurtosis_diff_values(generated, real, present, sfreq) -> Values:
    """|excess kurtosis difference| per (context, rollout), mean over present, non-constant channels."""
    difference = np.abs(_excess_kurtosis(generated) - _excess_kurtosis(real)[:, None])
    # NaN (a constant channel) counts as absent in the channel mean.
    return _masked_channel_mean(difference, present), "every channel is constant, where excess kurtosis is undefined"


def _excess_kurtosis(x: np.ndarray) -> np.ndarray:
    """Excess kurtosis over time, shape x.shape[:-1]; NaN for a constant channel."""
    constant = np.ptp(x, axis=-1) == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        kurtosis = stats.kurtosis(np.where(constant[..., None], 0.0, x), axis=-1, fisher=True)
    return np.where(constant, np.nan, kurtosis)


def _wasserstein_values(generated, real, present, sfreq) -> Values:
    """Wasserstein distance (std units) between standardized channels per (context, rollout), mean over channels."""
    # For two samples of equal size, scipy.stats.wasserstein_distance (the area between
    # the two empirical CDFs) is the mean absolute difference of the sorted samples;
    # sorting vectorizes over contexts, rollouts and channels where scipy takes one pair.
    sorted_generated = np.sort(_standardized(generated), axis=-1)
    sorted_real = np.sort(_standardized(real), axis=-1)
    distance = np.abs(sorted_generated - sorted_real[:, None]).mean(axis=-1)
    return _masked_channel_mean(distance, present), "no channel is present"


def _standardized(x: np.ndarray) -> np.ndarray:
    """Zero mean, unit standard deviation over time; a constant channel becomes all zeros."""
    # ptp finds constant channels exactly; std can come out at 1e-17 from rounding.
    constant = np.ptp(x, axis=-1, keepdims=True) == 0
    centred = x - x.mean(axis=-1, keepdims=True)
    std = np.where(constant, 1.0, centred.std(axis=-1, keepdims=True))
    return np.where(constant, 0.0, centred / std)


def _psd_distance_values(generated, real, present, sfreq) -> Values:
    """psd_distance_db on its own, for the horizon windows."""
    nperseg = _welch_nperseg(real.shape[-1], sfreq)
    freqs, psd_real = signal.welch(real, fs=sfreq, nperseg=nperseg, axis=-1)
    _, psd_generated = signal.welch(generated, fs=sfreq, nperseg=nperseg, axis=-1)
    in_range = _distance_bins(freqs, sfreq)
    if not in_range.any():
        return np.full(generated.shape[:2], np.nan), "no Welch frequency bin in range"
    floor = _psd_floor(psd_real, present)
    db_real = 10 * np.log10(np.maximum(psd_real[..., in_range], floor))
    db_generated = 10 * np.log10(np.maximum(psd_generated[..., in_range], floor))
    return _psd_distance(db_generated, db_real, present)[0], "no channel is present"


def _psd_distance(db_generated, db_real, present) -> tuple[np.ndarray, np.ndarray]:
    """RMS dB difference per (context, rollout) [n, R], and per frequency [n, R, F] (RMS over channels only)."""
    squared = (db_generated - db_real[:, None]) ** 2  # [n, R, C, F]
    per_context = np.sqrt(_masked_channel_mean(squared.mean(axis=-1), present))
    by_freq = np.sqrt(_masked_channel_mean(squared, present))
    return per_context, by_freq


def _distance_bins(freqs: np.ndarray, sfreq: float) -> np.ndarray:
    """The Welch bins psd_distance_db compares: [1 Hz, min(100 Hz, Nyquist)], less the Nyquist bin."""
    # A one-sided Welch estimate does not double the Nyquist bin as it does the others,
    # so that bin would show as a spurious 3 dB drop at the end of every spectrum.
    return (freqs >= PSD_FMIN_HZ) & (freqs <= PSD_FMAX_HZ) & (freqs < sfreq / 2)


def _welch_nperseg(n_times: int, sfreq: float) -> int:
    """Welch segment length in samples: one second, or the whole signal when shorter."""
    return max(1, min(n_times, int(round(WELCH_SECONDS * sfreq))))


def _psd_floor(psd_real: np.ndarray, present: np.ndarray) -> float:
    """The PSD value (signal unit**2 / Hz) below which log10 is not taken."""
    peak = float(psd_real[present].max()) if present.any() else 0.0
    return max(np.finfo(np.float64).tiny, peak * 10 ** (-PSD_FLOOR_DB_BELOW_PEAK / 10))


def _masked_channel_mean(values: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Mean over the channel axis (axis 2) of values (n, R, C, ...), over present, finite entries; NaN if none."""
    mask = present.reshape(present.shape[:1] + (1,) + present.shape[1:] + (1,) * (values.ndim - 3))
    mask = mask & np.isfinite(values)
    count = mask.sum(axis=2)
    total = np.where(mask, values, 0.0).sum(axis=2)
    return np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)


def _horizon(comparison: Comparison, generated, real, present, pairs: _ControlPairs, generated_finite: bool, window_s: float) -> None:
    """The four distances on consecutive windows of window_s seconds, for generated and control."""
    sfreq = comparison.sfreq
    window = int(round(window_s * sfreq))
    n_windows = real.shape[-1] // window if window >= 2 else 0
    comparison.settings["horizon"] = {"window_s": window_s, "window_samples": window, "n_windows": n_windows,
                                      "welch_nperseg": _welch_nperseg(window, sfreq), "distances": list(HORIZON_DISTANCES)}
    if n_windows == 0:
        reason = (f"a {window_s:g} s window holds {window} sample(s), too few" if window < 2
                  else f"the continuation ({real.shape[-1] / sfreq:g} s) is shorter than one {window_s:g} s window")
        comparison.absent["horizon"] = reason
        return
    distances = {"psd_distance_db": _psd_distance_values, "kurtosis_diff": _kurtosis_diff_values,
                 "wasserstein": _wasserstein_values, "cov_corr": lambda g, r, p, s: _cov_corr(g, r, p)[:2]}
    # A side: (suffix of its absent keys, the dict its series go to, the distance arguments for one window).
    sides = []
    if generated_finite:
        sides.append(("", comparison.horizon_generated, lambda g, r: (g, r, present)))
    else:
        for name in HORIZON_DISTANCES:
            comparison.absent[f"horizon_{name}"] = NOT_FINITE
    if pairs.available:
        sides.append(("_control", comparison.horizon_control, lambda g, r: pairs.control(r)))
    else:
        for name in HORIZON_DISTANCES:
            comparison.absent[f"horizon_{name}_control"] = pairs.why_absent
    for suffix, store, arguments in sides:
        for name in HORIZON_DISTANCES:
            series, reason = np.full(n_windows, np.nan), ""
            for index in range(n_windows):
                part = slice(index * window, (index + 1) * window)
                values, reason = distances[name](*arguments(generated[..., part], real[..., part]), sfreq)
                series[index] = _mean_or_nan(values)
            if np.isfinite(series).any():
                store[name] = series
            else:
                comparison.absent[f"horizon_{name}{suffix}"] = reason
    comparison.horizon_times_s = (np.arange(n_windows) + 0.5) * window / sfreq


def ratio_name(name: str) -> str:
    """The name of a distance's ratio to its control; the dB in the PSD distance cancels out of its ratio."""
    return "psd_distance_ratio" if name == "psd_distance_db" else f"{name}_ratio"


def _mean_or_nan(values: np.ndarray) -> float:
    """Mean of the finite entries; NaN when there are none."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def _record(comparison: Comparison, name: str, generated: Values | None, control: Values | None,
            no_control_reason: str | None) -> None:
    """Average per-(context, rollout) values into <name>, <name>_control and <name>_ratio, or say why each is absent.

    generated None means the generated continuation was not finite; control None means
    no control pair could be formed, for no_control_reason.
    """
    generated_value = control_value = None
    if generated is None:
        comparison.absent[name] = NOT_FINITE
    else:
        generated_value = _mean_or_nan(generated[0])
        if math.isnan(generated_value):
            comparison.absent[name] = generated[1]
            generated_value = None
        else:
            comparison.scalars[name] = generated_value
    if control is None:
        comparison.absent[f"{name}_control"] = no_control_reason
    else:
        control_value = _mean_or_nan(control[0])
        if math.isnan(control_value):
            comparison.absent[f"{name}_control"] = control[1]
            control_value = None
        else:
            comparison.scalars[f"{name}_control"] = control_value
    ratio = ratio_name(name)
    if generated_value is None:
        comparison.absent[ratio] = comparison.absent[name]
    elif control_value is None:
        comparison.absent[ratio] = comparison.absent[f"{name}_control"]
    elif control_value <= 0:
        comparison.absent[ratio] = f"the control is {control_value:g}, not positive"
    else:
        comparison.scalars[ratio] = generated_value / control_value


def _record_absent(comparison: Comparison, name: str, reason: str) -> None:
    """Mark <name>, <name>_control and <name>_ratio absent for one reason."""
    for key in (name, f"{name}_control", ratio_name(name)):
        comparison.absent[key] = reason


def _validated_inputs(generated, real, present) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float64 copies with absent channels zeroed, and present as bool (n_contexts, n_channels); ValueError on bad shapes."""
    generated = np.asarray(generated, dtype=np.float64)
    real = np.asarray(real, dtype=np.float64)
    if generated.ndim != 4:
        raise ValueError(f"generated must be (n_contexts, n_rollouts, n_channels, n_times), got shape {generated.shape}")
    if real.ndim != 3:
        raise ValueError(f"real must be (n_contexts, n_channels, n_times), got shape {real.shape}")
    if generated.shape[:1] + generated.shape[2:] != real.shape:
        raise ValueError(f"generated {generated.shape} and real {real.shape} differ in contexts, channels or times")
    if generated.shape[1] < 1 or min(real.shape) < 1:
        raise ValueError(f"generated {generated.shape} and real {real.shape} must not be empty")
    if present is None:
        present = np.ones(real.shape[:2], dtype=bool)
    present = np.asarray(present, dtype=bool)
    if present.shape != real.shape[:2]:
        raise ValueError(f"present must be (n_contexts, n_channels) = {real.shape[:2]}, got {present.shape}")
    if not present.any(axis=1).all():
        raise ValueError(f"contexts {np.flatnonzero(~present.any(axis=1)).tolist()} have no present channel")
    # Absent channels may hold anything (zeros, NaN); zeroing them keeps their values
    # out of every computation, not just out of the averages.
    generated = np.where(present[:, None, :, None], generated, 0.0)
    real = np.where(present[:, :, None], real, 0.0)
    if not np.isfinite(real).all():
        raise ValueError("real holds NaN or inf in a present channel")
    return generated, real, present


def _validated_analyses(analyses) -> tuple[str, ...]:
    """The requested analyses as a tuple; ValueError naming any unknown one."""
    analyses = tuple(analyses)
    unknown = [name for name in analyses if name not in ANALYSES]
    if unknown:
        raise ValueError(f"unknown analyses {unknown}; choose from {list(ANALYSES)}")
    return analyses


def _json_list(values: np.ndarray) -> list[float | None]:
    """Floats for JSON, None for NaN or inf (strict JSON has neither)."""
    return [float(value) if np.isfinite(value) else None for value in np.asarray(values, dtype=float)]

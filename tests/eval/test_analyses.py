"""Generation analyses on signals whose answer is known, and the figures drawn from them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import signal, stats

from brain_gen.eval import plots
from brain_gen.eval.analyses import BANDS, HORIZON_DISTANCES, compare_continuations

SFREQ = 100.0
DISTANCES = ("psd_distance_db", "kurtosis_diff", "wasserstein", *(f"bandpower_{band}" for band in BANDS))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def oscillations(freq_hz: float, n_contexts: int, n_channels: int, n_times: int, seed: int, noise: float = 0.1) -> np.ndarray:
    """Sines at freq_hz with random phases plus white noise, shape (n_contexts, n_channels, n_times)."""
    rng = np.random.default_rng(seed)
    times = np.arange(n_times) / SFREQ
    phases = rng.uniform(0, 2 * np.pi, size=(n_contexts, n_channels, 1))
    return np.sin(2 * np.pi * freq_hz * times + phases) + noise * rng.standard_normal((n_contexts, n_channels, n_times))


def mixed_filtered_noise(mixing: np.ndarray, n_contexts: int, n_times: int, seed: int) -> np.ndarray:
    """Low-passed (< 20 Hz) white noise through a fixed channel mixing matrix, shape (n_contexts, C, n_times)."""
    rng = np.random.default_rng(seed)
    b, a = signal.butter(4, 20.0, fs=SFREQ)
    sources = signal.lfilter(b, a, rng.standard_normal((n_contexts, mixing.shape[1], n_times + 200)), axis=-1)[..., 200:]
    return np.einsum("cs,nst->nct", mixing, sources)


def test_identical_continuations_are_at_distance_zero_and_correlate_perfectly():
    real = mixed_filtered_noise(np.random.default_rng(0).standard_normal((6, 6)), 3, 400, seed=1)
    comparison = compare_continuations(real[:, None], real, SFREQ)
    for name in DISTANCES:
        assert comparison.scalars[name] == pytest.approx(0.0, abs=1e-9), name
    assert comparison.scalars["cov_corr"] == pytest.approx(1.0)
    for name in HORIZON_DISTANCES:
        expected = 1.0 if name == "cov_corr" else 0.0
        np.testing.assert_allclose(comparison.horizon_generated[name], expected, atol=1e-9)


def test_10_hz_against_20_hz_is_far_in_psd_and_in_alpha_and_beta():
    generated = oscillations(10.0, 4, 3, 400, seed=0)[:, None]
    real = oscillations(20.0, 4, 3, 400, seed=1)
    scalars = compare_continuations(generated, real, SFREQ).scalars
    assert scalars["psd_distance_db"] > 10.0
    # Nearly all power sits in alpha for one and in beta for the other.
    assert scalars["bandpower_alpha"] > 0.8
    assert scalars["bandpower_beta"] > 0.8
    assert scalars["bandpower_delta"] < 0.05
    # Every real continuation is a 20 Hz sine, so the control stays close and the ratio is large.
    assert scalars["psd_distance_ratio"] > 2.0


def test_two_draws_of_one_process_score_like_the_control():
    mixing = np.random.default_rng(0).standard_normal((8, 8))
    generated = mixed_filtered_noise(mixing, 6, 400, seed=1)[:, None]
    real = mixed_filtered_noise(mixing, 6, 400, seed=2)
    scalars = compare_continuations(generated, real, SFREQ).scalars
    assert 0.7 < scalars["psd_distance_ratio"] < 1.4
    assert scalars["cov_corr"] > 0.7
    assert 0.8 < scalars["cov_corr_ratio"] < 1.25
    assert 0.6 < scalars["wasserstein_ratio"] < 1.6


def test_scalars_follow_the_documented_formulas():
    rng = np.random.default_rng(3)
    generated, real = rng.standard_normal((1, 1, 5, 300)) ** 3, rng.standard_normal((1, 5, 300))
    scalars = compare_continuations(generated, real, SFREQ).scalars
    g, r = generated[0, 0], real[0]
    freqs, psd_g = signal.welch(g, fs=SFREQ, nperseg=100)
    _, psd_r = signal.welch(r, fs=SFREQ, nperseg=100)
    bins = (freqs >= 1.0) & (freqs < SFREQ / 2)
    difference_db = 10 * np.log10(psd_g[:, bins]) - 10 * np.log10(psd_r[:, bins])
    assert scalars["psd_distance_db"] == pytest.approx(np.sqrt(np.mean(difference_db**2)))
    upper = np.triu_indices(5, k=1)
    expected_cov_corr = np.corrcoef(np.corrcoef(g)[upper], np.corrcoef(r)[upper])[0, 1]
    assert scalars["cov_corr"] == pytest.approx(expected_cov_corr)
    expected_kurtosis = np.mean(np.abs(stats.kurtosis(g, axis=-1) - stats.kurtosis(r, axis=-1)))
    assert scalars["kurtosis_diff"] == pytest.approx(expected_kurtosis)

    def standardized(x):
        return (x - x.mean()) / x.std()

    expected_wasserstein = np.mean([stats.wasserstein_distance(standardized(a), standardized(b)) for a, b in zip(g, r)])
    assert scalars["wasserstein"] == pytest.approx(expected_wasserstein)


def test_one_channel_has_no_cov_corr_and_says_why():
    real = oscillations(10.0, 3, 1, 200, seed=0)
    comparison = compare_continuations(real[:, None] * 2.0, real, SFREQ)
    for name in ("cov_corr", "cov_corr_control", "cov_corr_ratio"):
        assert name not in comparison.scalars
        assert "one channel" in comparison.absent[name]
    assert comparison.scalars["psd_distance_db"] > 0


def test_bands_are_capped_at_nyquist_and_a_band_above_it_is_absent():
    sfreq = 50.0
    real = np.random.default_rng(0).standard_normal((3, 2, 200))
    comparison = compare_continuations(real[:, None], real, sfreq, analyses=("spectral",))
    assert comparison.settings["bandpower"]["bands_hz"]["beta"] == [13.0, 25.0]
    assert comparison.settings["bandpower"]["total_range_hz"] == [1.0, 25.0]
    assert "bandpower_beta" in comparison.scalars
    assert "bandpower_gamma" not in comparison.scalars
    assert "Nyquist" in comparison.absent["bandpower_gamma"]
    assert comparison.settings["spectral"]["fmax_hz"] == 25.0
    assert comparison.freqs.max() < 25.0


def test_an_absent_channel_counts_as_if_it_were_dropped():
    rng = np.random.default_rng(0)
    generated, real = rng.standard_normal((3, 2, 4, 200)), rng.standard_normal((3, 4, 200))
    generated[:, :, 2] = 0.0
    real[:, 2] = 0.0
    present = np.ones((3, 4), dtype=bool)
    present[:, 2] = False
    masked = compare_continuations(generated, real, SFREQ, present=present)
    keep = [0, 1, 3]
    dropped = compare_continuations(generated[:, :, keep], real[:, keep], SFREQ)
    assert masked.scalars.keys() == dropped.scalars.keys()
    for name, value in dropped.scalars.items():
        assert masked.scalars[name] == pytest.approx(value), name


def test_the_values_of_an_absent_channel_are_never_read():
    rng = np.random.default_rng(1)
    generated, real = rng.standard_normal((3, 1, 4, 200)), rng.standard_normal((3, 4, 200))
    present = np.ones((3, 4), dtype=bool)
    present[1, 0] = False  # one session lacks channel 0; the control pairs 0-1 and 1-2 lose it too
    zeros_there = compare_continuations(np.where(present[:, None, :, None], generated, 0.0),
                                        np.where(present[:, :, None], real, 0.0), SFREQ, present=present)
    garbage = generated.copy(), real.copy()
    garbage[0][1, :, 0], garbage[1][1, 0] = np.nan, 1e6
    garbage_there = compare_continuations(*garbage, SFREQ, present=present)
    assert garbage_there.scalars == pytest.approx(zeros_there.scalars)
    assert all(math.isfinite(value) for value in garbage_there.scalars.values())


def test_a_single_context_has_no_control_and_says_why():
    real = np.random.default_rng(0).standard_normal((1, 3, 200))
    comparison = compare_continuations(real[:, None] + 0.1, real, SFREQ)
    assert "psd_distance_db" in comparison.scalars
    assert "two contexts" in comparison.absent["psd_distance_db_control"]
    assert "two contexts" in comparison.absent["psd_distance_ratio"]
    assert not comparison.horizon_control


def test_constant_channels_give_finite_scalars():
    rng = np.random.default_rng(0)
    generated, real = rng.standard_normal((3, 1, 4, 200)), rng.standard_normal((3, 4, 200))
    generated[:, :, 1] = 0.5  # a dead generated channel against a live real one
    real[:, 3] = 2.0
    generated[:, :, 3] = 2.0  # a flat channel reproduced exactly
    comparison = compare_continuations(generated, real, SFREQ)
    assert all(math.isfinite(value) for value in comparison.scalars.values())
    assert comparison.scalars["psd_distance_db"] > 10.0
    assert comparison.scalars["wasserstein"] > 0


def test_a_generation_with_nan_is_reported_absent_not_averaged_away():
    rng = np.random.default_rng(0)
    generated, real = rng.standard_normal((3, 2, 3, 200)), rng.standard_normal((3, 3, 200))
    generated[2, 1, 0, 50] = np.nan
    comparison = compare_continuations(generated, real, SFREQ)
    assert "NaN" in comparison.absent["psd_distance_db"]
    assert "wasserstein" not in comparison.scalars
    assert "wasserstein_control" in comparison.scalars


def test_only_the_requested_analyses_are_computed():
    real = np.random.default_rng(0).standard_normal((2, 3, 200))
    comparison = compare_continuations(real[:, None], real, SFREQ, analyses=("amplitude",))
    assert set(comparison.scalars) == {f"{name}{suffix}" for name in ("kurtosis_diff", "wasserstein")
                                       for suffix in ("", "_control", "_ratio")}
    assert comparison.freqs is None and comparison.corr_real is None and comparison.horizon_times_s is None
    with pytest.raises(ValueError, match="unknown analyses"):
        compare_continuations(real[:, None], real, SFREQ, analyses=("spectra",))


def test_horizon_series_have_one_value_per_window():
    rng = np.random.default_rng(0)
    generated, real = rng.standard_normal((3, 1, 4, 400)), rng.standard_normal((3, 4, 400))
    comparison = compare_continuations(generated, real, SFREQ, analyses=("horizon",), horizon_window_s=0.3)
    np.testing.assert_allclose(comparison.horizon_times_s, 0.15 + 0.3 * np.arange(13))
    for series in (comparison.horizon_generated, comparison.horizon_control):
        assert set(series) == set(HORIZON_DISTANCES)
        assert all(values.shape == (13,) for values in series.values())
    assert comparison.scalars == {}
    too_long = compare_continuations(generated, real, SFREQ, analyses=("horizon",), horizon_window_s=5.0)
    assert "shorter than one" in too_long.absent["horizon"]


def test_to_json_is_strict_json_with_settings_and_horizon():
    real = oscillations(10.0, 2, 1, 200, seed=0)
    summary = compare_continuations(real[:, None], real, SFREQ).to_json()
    decoded = json.loads(json.dumps(summary, allow_nan=False))
    assert decoded["settings"]["spectral"]["welch_nperseg"] == 100
    assert decoded["settings"]["bandpower"]["bands_hz"]["gamma"] == [30.0, 45.0]
    assert len(decoded["horizon"]["times_s"]) == 4
    assert "cov_corr" in decoded["absent"]


def test_the_four_figures_render_to_png():
    rng = np.random.default_rng(0)
    context, real, generated = rng.standard_normal((4, 8, 200)), rng.standard_normal((4, 8, 400)), rng.standard_normal((4, 1, 8, 400))
    ch_names = [f"MEG{index:03d}" for index in range(8)]
    comparison = compare_continuations(generated, real, SFREQ)
    figures = [
        plots.psd_figure(comparison),
        plots.covariance_figure(comparison, ch_names),
        plots.examples_figure(context, real, generated[:, 0], SFREQ, ch_names, num_examples=2),
        plots.horizon_figure(comparison),
    ]
    for figure in figures:
        png = plots.figure_png(figure)
        assert png.startswith(PNG_SIGNATURE) and len(png) > 1000


def test_figures_of_analyses_not_computed_are_none():
    real = np.random.default_rng(0).standard_normal((2, 3, 200))
    comparison = compare_continuations(real[:, None], real, SFREQ, analyses=("amplitude",))
    assert plots.psd_figure(comparison) is None
    assert plots.covariance_figure(comparison, ["a", "b", "c"]) is None
    assert plots.horizon_figure(comparison) is None

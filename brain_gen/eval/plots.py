"""Figures of a :class:`~brain_gen.eval.analyses.Comparison`: spectra, correlations, examples and horizon.

Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas rather than
pyplot, whose global figure registry would leak figures across evaluations and
threads. A figure whose analysis was not computed is None: the caller skips it.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure, SubplotParams

from brain_gen.eval.analyses import HORIZON_DISTANCES, Comparison

GENERATED_COLOR = "tab:orange"
REAL_COLOR = "tab:blue"
CONTROL_COLOR = "0.35"
CONTEXT_COLOR = "0.25"
# Above this many channels tick labels overlap and only clutter the matrices.
MAX_LABELLED_CHANNELS = 32

HORIZON_LABELS = {
    "psd_distance_db": ("PSD distance", "RMS dB difference"),
    "cov_corr": ("spatial similarity", "r of channel correlations"),
    "kurtosis_diff": ("kurtosis difference", "|excess kurtosis difference|"),
    "wasserstein": ("amplitude distribution", "Wasserstein (std units)"),
}


def _figure(width_in: float, height_in: float) -> Figure:
    # Fixed margins instead of a layout engine: constrained layout measured half the
    # drawing time of these figures, and the final evaluation of a run is waited for.
    margins = SubplotParams(left=0.6 / width_in, right=1 - 0.25 / width_in, bottom=0.5 / height_in, top=1 - 0.45 / height_in, hspace=0.5, wspace=0.3)
    figure = Figure(figsize=(width_in, height_in), dpi=100, subplotpars=margins)
    FigureCanvasAgg(figure)
    return figure


def warm_up() -> None:
    """Build and render one tiny examples figure, discarded.

    The first such figure in a process costs about 0.3 s more than later ones (fonts,
    text and legend caches). The evaluation process pays that while it starts, beside
    the training command's own start-up, rather than in the final evaluation.
    """
    signal = np.zeros((1, 1, 8))
    figure_png(examples_figure(signal, signal, signal, 100.0, ["warm-up"], 1), dpi=20)


def figure_png(figure: Figure, dpi: int = 100) -> bytes:
    """The figure rendered as PNG bytes at dpi dots per inch."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def psd_figure(comparison: Comparison) -> Figure | None:
    """Continuation PSDs (dB vs Hz) of generated and real, and their dB distance per frequency; None without spectra.

    Top: the channel-averaged PSD, median over contexts with a 25-75 % band, for the
    generated and real continuations. Bottom: the RMS over channels of the dB difference
    at each frequency, median over contexts, generated vs real and (dashed) the control,
    real j vs real i. The control is drawn only at the bottom: its PSDs are the real
    ones in another order, so on top it would retrace the real median.
    """
    if comparison.freqs is None or comparison.psd_generated_db is None:
        return None
    freqs = comparison.freqs
    figure = _figure(6.4, 5.2)
    spectra, distance = figure.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    for psd, label, color in ((comparison.psd_real_db, "real", REAL_COLOR),
                              (comparison.psd_generated_db, "generated", GENERATED_COLOR)):
        low, median, high = np.percentile(psd, [25, 50, 75], axis=0)
        spectra.fill_between(freqs, low, high, color=color, alpha=0.25, linewidth=0)
        spectra.plot(freqs, median, color=color, label=label)
    spectra.set_ylabel("PSD (dB)")
    n_contexts = comparison.psd_real_db.shape[0]
    spectra.set_title(f"continuation PSD, median and IQR over {n_contexts} context(s)")
    spectra.legend(fontsize="small")
    distance.plot(freqs, np.median(comparison.psd_distance_by_freq_generated, axis=0), color=GENERATED_COLOR,
                  label="generated vs real")
    if comparison.psd_distance_by_freq_control is not None:
        distance.plot(freqs, np.median(comparison.psd_distance_by_freq_control, axis=0), color=CONTROL_COLOR,
                      linestyle="--", label="control")
    distance.set_ylabel("RMS dB difference")
    distance.set_xlabel("frequency (Hz)")
    distance.set_ylim(bottom=0)
    scalar = comparison.scalars.get("psd_distance_db")
    ratio = comparison.scalars.get("psd_distance_ratio")
    title = "dB distance per frequency"
    if scalar is not None:
        title += f": {scalar:.2f} dB overall" + (f", ratio to control {ratio:.2f}" if ratio is not None else "")
    distance.set_title(title, fontsize="medium")
    distance.legend(fontsize="small")
    return figure


def covariance_figure(comparison: Comparison, ch_names: list[str]) -> Figure | None:
    """Real and generated channel correlation matrices side by side on one [-1, 1] scale; None without the spatial analysis."""
    if comparison.corr_real is None or comparison.corr_generated is None:
        return None
    n_channels = comparison.corr_real.shape[0]
    figure = _figure(8.0, 3.9)
    axes = figure.subplots(1, 2)
    for ax, matrix, title in ((axes[0], comparison.corr_real, "real"), (axes[1], comparison.corr_generated, "generated")):
        image = ax.imshow(matrix, vmin=-1.0, vmax=1.0, cmap="RdBu_r", interpolation="nearest")
        ax.set_title(f"{title} continuation")
        if n_channels <= MAX_LABELLED_CHANNELS:
            ticks = np.arange(n_channels)
            ax.set_xticks(ticks, ch_names, rotation=90, fontsize="x-small")
            ax.set_yticks(ticks, ch_names, fontsize="x-small")
        else:
            ax.set_xlabel("channel")
            ax.set_ylabel("channel")
    figure.colorbar(image, ax=axes, shrink=0.8, label="correlation")
    value = comparison.scalars.get("cov_corr")
    control = comparison.scalars.get("cov_corr_control")
    if value is not None:
        figure.suptitle(f"cov_corr {value:.2f}" + (f" (control {control:.2f})" if control is not None else ""))
    else:
        figure.suptitle(f"cov_corr absent: {comparison.absent.get('cov_corr', 'not computed')}", fontsize="small")
    return figure


def examples_figure(
    context: np.ndarray,
    real: np.ndarray,
    generated: np.ndarray,
    sfreq: float,
    ch_names: list[str],
    num_examples: int,
    max_channels: int = 4,
    present: np.ndarray | None = None,
) -> Figure:
    """One panel per context: the context, then the real and the generated continuation of a few channels.

    Parameters
    ----------
    context : array, shape (n_contexts, n_channels, n_context_times)
    real, generated : array, shape (n_contexts, n_channels, n_times)
        The real continuation and the first generated rollout.
    sfreq : float
        Sampling frequency in Hz; time is in seconds, 0 where the context ends.
    num_examples : int
        Panels to draw (at most n_contexts).
    max_channels : int
        Channels per panel, stacked with a vertical offset; the first present ones.
    present : bool array, shape (n_contexts, n_channels) | None
        Channels a context's session has; absent ones are not drawn.
    """
    context, real, generated = (np.asarray(array, dtype=float) for array in (context, real, generated))
    n_examples = max(1, min(num_examples, context.shape[0]))
    figure = _figure(7.5, 1.1 + 1.9 * n_examples)
    # One shared time axis: tick labels under the last panel only, where they cannot run into a title.
    axes = np.atleast_1d(figure.subplots(n_examples, 1, squeeze=False, sharex=True)[:, 0])
    context_times = (np.arange(context.shape[-1]) - context.shape[-1]) / sfreq
    continuation_times = np.arange(real.shape[-1]) / sfreq
    for example, ax in enumerate(axes):
        channels = np.arange(context.shape[1]) if present is None else np.flatnonzero(present[example])
        channels = channels[:max_channels]
        shown = np.concatenate([context[example, channels], real[example, channels]], axis=-1)
        # One offset for the panel, from the real signal, so the channels keep their
        # relative amplitudes and a runaway generation stands out rather than being rescaled.
        spread = 4.0 * float(np.max(np.std(shown, axis=-1))) or 1.0
        for row, channel in enumerate(channels):
            offset = -row * spread
            centre = float(np.mean(shown[row]))
            ax.plot(context_times, context[example, channel] - centre + offset, color=CONTEXT_COLOR, linewidth=0.8,
                    label="context" if row == 0 else None)
            ax.plot(continuation_times, real[example, channel] - centre + offset, color=REAL_COLOR, linewidth=0.8,
                    label="real" if row == 0 else None)
            ax.plot(continuation_times, generated[example, channel] - centre + offset, color=GENERATED_COLOR,
                    linewidth=0.8, label="generated" if row == 0 else None)
        ax.axvline(0.0, color="k", linestyle=":", linewidth=1.0)
        ax.set_yticks([-row * spread for row in range(len(channels))], [ch_names[channel] for channel in channels],
                      fontsize="small")
        ax.set_xlim(context_times[0] if context_times.size else 0.0, continuation_times[-1])
        ax.set_title(f"context {example}", fontsize="small", loc="left")
    axes[0].legend(loc="upper right", fontsize="x-small", ncols=3)
    axes[-1].set_xlabel("time since the end of the context (s)")
    return figure


def horizon_figure(comparison: Comparison) -> Figure | None:
    """Each distance against time since the end of the context (s), generated and control; None without a horizon."""
    if comparison.horizon_times_s is None or not (comparison.horizon_generated or comparison.horizon_control):
        return None
    times = comparison.horizon_times_s
    figure = _figure(7.5, 5.0)
    axes = figure.subplots(2, 2, sharex=True).ravel()
    for ax, name in zip(axes, HORIZON_DISTANCES):
        title, ylabel = HORIZON_LABELS[name]
        ax.set_title(title, fontsize="medium")
        ax.set_ylabel(ylabel, fontsize="small")
        drawn = False
        if name in comparison.horizon_generated:
            ax.plot(times, comparison.horizon_generated[name], marker="o", color=GENERATED_COLOR, label="generated vs real")
            drawn = True
        if name in comparison.horizon_control:
            ax.plot(times, comparison.horizon_control[name], marker="o", linestyle="--", color=CONTROL_COLOR,
                    label="control")
            drawn = True
        if not drawn:
            ax.text(0.5, 0.5, "absent", transform=ax.transAxes, ha="center", va="center", color="0.5")
        elif name == "psd_distance_db":
            ax.legend(fontsize="x-small")
    for ax in axes[2:]:
        ax.set_xlabel("time since the end of the context (s)")
    window_s = comparison.settings["horizon"]["window_s"]
    figure.suptitle(f"distance per {window_s:g} s window of the continuation")
    return figure

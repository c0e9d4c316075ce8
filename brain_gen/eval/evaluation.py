"""One evaluation of a checkpoint: teacher-forced metrics, generated continuations, analyses, files.

``Evaluation`` holds what does not depend on the checkpoint (datasets, contexts, the
teacher-forced batches), so a warm evaluation process builds it once and then scores
each new checkpoint with ``evaluate``. ``brain-gen eval`` uses the same class.

Nothing here imports Lightning: an evaluation process starts in a few seconds.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brain_gen.config.errors import ConfigError
from brain_gen.config.registry import instantiate, resolve_class
from brain_gen.config.schema import EvalRunnerConfig, ExperimentConfig
from brain_gen.dataset import DATASETS
from brain_gen.dataset.datasets import WindowDataset
from brain_gen.dataset.loaders import BUILTIN_LOADERS, loader_extras, make_loader
from brain_gen.dataset.mulaw import mu_law_decode, mu_law_encode
from brain_gen.dataset.splitter import DataSplitter, Split
from brain_gen.losses import LOSSES
from brain_gen.losses.next_step import MSE
from brain_gen.models import COMPILED_PREFIX, MODELS, call_model

log = logging.getLogger(__name__)

# Prefix of the model's weights inside a LitModel checkpoint.
STATE_PREFIX = "model."
CHECKPOINT_NAME = re.compile(r"epoch=(\d+)-step=(\d+)")


def evaluation_folder_name(checkpoint: str | Path, epoch: int, step: int) -> str:
    """``epoch=E-step=S``, with E and S as the checkpoint's file name has them when it names them."""
    match = CHECKPOINT_NAME.search(Path(checkpoint).name)
    if match:
        epoch, step = int(match.group(1)), int(match.group(2))
    return f"epoch={epoch}-step={step}"


def read_checkpoint(path: str | Path, key: str = "--ckpt") -> dict[str, Any]:
    """A checkpoint's contents, loaded without running pickled code (tensors and plain data only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"{key}: checkpoint not found: {path}") from None
    except Exception as exc:
        raise ConfigError(f"{key}: cannot read {path} as a checkpoint ({type(exc).__name__}: {exc}); point it at a .ckpt file") from exc


def model_state(checkpoint: dict[str, Any], path: str | Path) -> dict[str, torch.Tensor]:
    """The model's own weights from a LitModel checkpoint (``model.*`` keys, compile prefix removed)."""
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise ConfigError(f"--ckpt: {path} has no state_dict; it is not a brain-gen training checkpoint")
    weights = {}
    for name, value in state.items():
        if name.startswith(STATE_PREFIX):
            weights[name[len(STATE_PREFIX) :].replace(COMPILED_PREFIX, "")] = value
    if not weights:
        raise ConfigError(f"--ckpt: {path} holds no model.* weights; it is not a brain-gen training checkpoint")
    return weights


def pick_device(setting: str) -> torch.device:
    """The device of ``eval_runner.device``: auto takes the first GPU when one is visible."""
    if setting == "cuda" and not torch.cuda.is_available():
        raise ConfigError("eval_runner.device: cuda, but no GPU is visible; use auto or cpu")
    if setting == "cpu" or (setting == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda")


@dataclass
class Contexts:
    """Real recordings cut into context and continuation, in signal units.

    ``signals`` is float32 ``[n, C, context + continuation]`` in the canonical layout,
    ``present`` bool ``[n, C]``; ``sessions`` and ``starts_s`` say where each was read.
    """

    signals: np.ndarray
    present: np.ndarray
    sessions: list[str]
    starts_s: list[float]
    context_samples: int
    continuation_samples: int


def draw_contexts(split: Split, settings: EvalRunnerConfig) -> Contexts:
    """Real spans of ``total_length_s`` from the sessions of a split, seeded.

    ``num_sessions`` sessions are drawn (all when it is 0 or less) and each gives one
    span at a random start. The real-versus-real control needs two spans, so a single
    session gives two non-overlapping spans when it is long enough.
    """
    sampler = settings.example_sampler
    key = "eval_runner.example_sampler"
    if not split.sessions:
        raise ConfigError(f"{key}.split: the {split.name} split has no sessions to draw contexts from; choose another split")
    reader = WindowDataset(split)
    total = int(round(sampler.total_length_s * split.sfreq))
    context = int(round(sampler.context_length_s * split.sfreq))
    if context < 1 or total - context < 1:
        raise ConfigError(f"{key}: at {split.sfreq:g} Hz the context and continuation need at least one sample each")
    lengths = [reader.session_samples(index) for index in range(len(split.sessions))]
    short = [index for index, length in enumerate(lengths) if length < total]
    if short:
        first = short[0]
        raise ConfigError(
            f"{key}.total_length_s: {sampler.total_length_s:g} s is longer than session {split.sessions[first].name} "
            f"({lengths[first] / split.sfreq:g} s) of the {split.name} split; shorten it to at most "
            f"{min(lengths) / split.sfreq:g} s"
        )
    rng = np.random.default_rng(sampler.seed)
    count = len(split.sessions) if sampler.num_sessions <= 0 else min(sampler.num_sessions, len(split.sessions))
    chosen = sorted(rng.choice(len(split.sessions), size=count, replace=False).tolist())
    spans: list[tuple[int, int]] = []
    for index in chosen:
        slots = lengths[index] // total
        wanted = 2 if len(chosen) == 1 and slots >= 2 else 1
        # One random shift for all slots of a session keeps its spans from overlapping.
        shift = int(rng.integers(0, lengths[index] - slots * total + 1))
        for slot in sorted(rng.choice(slots, size=wanted, replace=False).tolist()):
            spans.append((index, slot * total + shift))
    windows, present = zip(*(reader.read_span(index, start, total) for index, start in spans))
    return Contexts(
        signals=np.stack(windows),
        present=np.stack(present),
        sessions=[split.sessions[index].name for index, _ in spans],
        starts_s=[start / split.sfreq for _, start in spans],
        context_samples=context,
        continuation_samples=total - context,
    )


class CodeSpace:
    """How signals become a model's inputs and how its forecasts come back to signal units.

    Code datasets (ChunkDataset and its kin, with ``mu`` and ``max_val``) take mu-law
    codes; float datasets take the signal itself. The real continuation goes through
    the same coding, so generated and real share its quantization and clipping.
    """

    def __init__(self, dataset: Any):
        # BPEDataset writes codes as text, so it counts as a code dataset too.
        self.codes = hasattr(dataset, "mu") and hasattr(dataset, "max_val") and not _float_inputs(dataset)
        self.mu = getattr(dataset, "mu", None)
        self.max_val = getattr(dataset, "max_val", None)

    def encode(self, signals: torch.Tensor) -> torch.Tensor:
        return mu_law_encode(signals, self.mu, self.max_val) if self.codes else signals.float()

    def decode(self, values: torch.Tensor) -> torch.Tensor:
        return mu_law_decode(values, self.mu, self.max_val) if self.codes else values.float()


def _float_inputs(dataset: Any) -> bool:
    if len(dataset) == 0:
        return False
    inputs = dataset[0][0]
    return torch.is_tensor(inputs) and inputs.is_floating_point()


def iterate_one_step(model: torch.nn.Module, context: torch.Tensor, steps: int, window: int | None) -> torch.Tensor:
    """Forecast of a float next-step model by feeding each prediction back as the next input.

    The model maps ``[B, C, T]`` to its prediction of the next value at every position;
    at most the last ``window`` samples (the training window) are fed each step.
    """
    sequence = context.float()
    outputs = []
    for _ in range(steps):
        recent = sequence if window is None else sequence[..., -window:]
        prediction = call_model(model, recent)[..., -1:]
        outputs.append(prediction)
        sequence = torch.cat([sequence, prediction], dim=-1)
    return torch.cat(outputs, dim=-1)


def _mean_std(values: list[float], weights: list[int]) -> dict[str, float]:
    array, weight = np.asarray(values, dtype=np.float64), np.asarray(weights, dtype=np.float64)
    mean = float((array * weight).sum() / weight.sum())
    std = float(np.sqrt((weight * (array - mean) ** 2).sum() / weight.sum()))
    return {"mean": mean, "std": std, "n": int(weight.sum())}


def generation_mode(config: ExperimentConfig, model_class: type, loss: Any, dataset: Any, strict: bool = True) -> tuple[str | None, str | None]:
    """How continuations are generated, and a notice when they are not.

    ``forecast`` (the model's own), ``text`` (TextGPT on BPE text), ``iterate`` (a
    float next-step model trained with MSE, fed its own predictions) or None. A model
    that cannot generate is an error when ``generator.enabled`` was written (and
    ``strict``), else a notice.
    """
    settings = config.eval_runner or EvalRunnerConfig()
    if not settings.generator.enabled:
        return None, None
    if hasattr(model_class, "forecast"):
        return ("text" if getattr(dataset, "alphabet", None) is not None else "forecast"), None
    if not CodeSpace(dataset).codes and isinstance(loss, MSE):
        return "iterate", None
    message = f"model_name: {config.model_name} has no forecast method, so it cannot generate continuations"
    if strict and settings.generator.explicitly_set("enabled"):
        raise ConfigError(f"eval_runner.generator.enabled: {message}; set generator.enabled: false for teacher-forced metrics only")
    return None, f"notice: {message}; the evaluations score teacher-forced metrics only"


def check_evaluation_fits(config: ExperimentConfig, splits: dict[str, Split], datasets: dict[str, Any], model_class: type, loss: Any) -> list[str]:
    """The checks an evaluation would fail on, run before training; returns notices to print."""
    settings = config.eval_runner
    pick_device(settings.device)
    if len(datasets[settings.metrics_split]) == 0:
        raise ConfigError(f"eval_runner.metrics_split: the {settings.metrics_split} split has no windows; choose another split or add data")
    mode, notice = generation_mode(config, model_class, loss, datasets[settings.example_sampler.split])
    if mode is not None:
        draw_contexts(splits[settings.example_sampler.split], settings)
    return [notice] if notice else []


class Evaluation:
    """Everything an evaluation of one run needs except the checkpoint; ``evaluate`` scores one.

    Args:
        config: the run's config (its ``eval_runner`` section holds the settings;
            defaults when it has none).
        device: where models run; None follows ``eval_runner.device``.
        strict: a model that cannot generate is an error when ``generator.enabled`` is
            written in the config. The evaluation process of a run passes False: it reads
            the run's resolved config, where every default is written, and training has
            checked the user's own config already.
    """

    def __init__(self, config: ExperimentConfig, device: torch.device | None = None, strict: bool = True):
        self.config = config
        self.settings = config.eval_runner or EvalRunnerConfig()
        self.device = device or pick_device(self.settings.device)
        self.notices: list[str] = []
        splitter = config.datasplitter
        dataset_class = resolve_class("datasplitter.dataset_class", splitter.dataset_class, DATASETS)
        self.model_class = resolve_class("model_name", config.model_name, MODELS)
        loss_class = resolve_class("loss_name", config.loss_name, LOSSES)
        self.loss = instantiate("loss", loss_class, config.loss)
        self.splits = DataSplitter(splitter, cache_dir=Path(config.save_dir) / "cache").split()
        needed = {self.settings.metrics_split, self.settings.example_sampler.split}
        self.datasets = {
            name: instantiate("datasplitter.dataset_kwargs", dataset_class, splitter.dataset_kwargs, self.splits[name])
            for name in sorted(needed)
        }
        metrics_dataset = self.datasets[self.settings.metrics_split]
        if len(metrics_dataset) == 0:
            raise ConfigError(
                f"eval_runner.metrics_split: the {self.settings.metrics_split} split has no windows; choose another split or add data"
            )
        loader_class = resolve_class("dataloader_class", config.dataloader_class, BUILTIN_LOADERS)
        extras, eval_extras = loader_extras(config, loader_class)
        # No worker processes: the evaluation runs beside training and should stay small.
        self.loader = make_loader(
            metrics_dataset, loader_class, config.dataloader, config.dataloader.batch_size, False, extras, eval_extras, num_workers=0
        )
        self._batches: list[Any] | None = None
        sampler_dataset = self.datasets[self.settings.example_sampler.split]
        self.code_space = CodeSpace(sampler_dataset)
        self.sequence_length = getattr(sampler_dataset, "sequence_length", None)
        self.contexts: Contexts | None = None
        self.generation_mode, notice = generation_mode(config, self.model_class, self.loss, sampler_dataset, strict)
        if notice:
            self.notices.append(notice)
            log.warning("%s", notice)
        self.generate = self.generation_mode is not None
        self.layout = self.splits[self.settings.example_sampler.split].layout
        self.sfreq = self.splits[self.settings.example_sampler.split].sfreq

    # ----------------------------------------------------------------- scoring

    def build_model(self, checkpoint_path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
        """The model of the config with the checkpoint's weights, in eval mode on the device."""
        checkpoint = read_checkpoint(checkpoint_path)
        model = instantiate("model_config", self.model_class, self.config.model_kwargs)
        resume_context = self.config.lightning.resume_context if self.config.resume_from else None
        if resume_context is not None and hasattr(model, "resize_context"):
            model.resize_context(**{k: v for k, v in resume_context.model_dump().items() if v is not None and k in ("input_shape", "rope_theta", "max_position_embeddings")})
        try:
            model.load_state_dict(model_state(checkpoint, checkpoint_path))
        except RuntimeError as exc:
            raise ConfigError(f"--ckpt: {checkpoint_path} does not fit model_config ({str(exc).splitlines()[0]}); use the run's own config") from exc
        return model.to(self.device).eval(), checkpoint

    def warm_up(self) -> None:
        """Read the contexts and the teacher-forced batches now rather than during the first evaluation."""
        if self.generate and self.contexts is None:
            self.contexts = draw_contexts(self.splits[self.settings.example_sampler.split], self.settings)
        if self._batches is None and self.settings.max_batches is not None:
            self._batches = [batch for _, batch in zip(range(self.settings.max_batches), self.loader)]

    def teacher_forced(self, model: torch.nn.Module) -> dict[str, Any]:
        """Loss and metrics on the first ``max_batches`` batches, weighted by batch size as val/loss is."""
        self.warm_up()
        batches = self._batches if self._batches is not None else self.loader
        values: dict[str, list[float]] = {"loss": []}
        sizes: list[int] = []
        metrics = getattr(self.loss, "metrics", {})
        with torch.inference_mode():
            for inputs, targets in batches:
                inputs, targets = _to_device(inputs, self.device), _to_device(targets, self.device)
                outputs = call_model(model, inputs)
                values["loss"].append(float(self.loss(outputs, targets, model=model)))
                for name, metric in metrics.items():
                    values.setdefault(name, []).append(float(metric(outputs, targets)))
                sizes.append(len(targets))
        return {
            "split": self.settings.metrics_split,
            "batches": len(sizes),
            "loss": _mean_std(values["loss"], sizes),
            "metrics": {name: _mean_std(series, sizes) for name, series in values.items() if name != "loss"},
        }

    def rollouts(self, model: torch.nn.Module) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Context, real and generated continuations in signal units, and generation details.

        Returns ``context [n, C, Tc]``, ``real [n, C, Tn]``, ``generated [n, R, C, Tn]``.
        """
        self.warm_up()
        contexts, generator_settings = self.contexts, self.settings.generator
        signals = torch.from_numpy(contexts.signals)
        coded = self.code_space.encode(signals)
        context_codes = coded[..., : contexts.context_samples]
        # Both sides in signal units after the same coding.
        decoded = self.code_space.decode(coded).numpy()
        context, real = decoded[..., : contexts.context_samples], decoded[..., contexts.context_samples :]
        steps = contexts.continuation_samples
        rollouts = generator_settings.rollouts_per_context
        jobs = [(index, rollout) for index in range(len(context_codes)) for rollout in range(rollouts)]
        generator = torch.Generator(device=self.device).manual_seed(generator_settings.seed)
        generated = np.zeros((len(context_codes), rollouts, *real.shape[1:]), dtype=np.float32)
        details: dict[str, Any] = {}
        batch_size = generator_settings.rollout_batch_size
        for first in range(0, len(jobs), batch_size):
            batch_jobs = jobs[first : first + batch_size]
            batch = context_codes[[index for index, _ in batch_jobs]]
            values, batch_details = self.continue_codes(model, batch, steps, generator)
            for name, count in batch_details.items():
                details[name] = details.get(name, 0) + count
            continuation = self.code_space.decode(values).numpy()
            for row, (index, rollout) in enumerate(batch_jobs):
                generated[index, rollout] = continuation[row]
        if "groups" in details:
            details["text_wellformed_rate"] = details["wellformed_groups"] / max(details["groups"], 1)
        return context, real, generated, details

    def continue_codes(self, model: torch.nn.Module, codes: torch.Tensor, steps: int, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, int]]:
        """``steps`` generated values after each context ``[B, C, Tc]`` in the model's input space, and
        counts about the generation (text models report their well-formed groups)."""
        codes = codes.to(self.device)
        details: dict[str, int] = {}
        if self.generation_mode == "iterate":
            with torch.inference_mode():
                values = iterate_one_step(model, codes, steps, self.sequence_length)
        elif self.generation_mode == "text":
            from brain_gen.eval.text_generation import forecast_text

            values, details = forecast_text(model, self.loader.collate_fn, self.datasets[self.settings.example_sampler.split], codes, steps, self.settings.generator.sampling, generator)
        else:
            # A user's forecast may not switch autograd off itself.
            with torch.inference_mode():
                values = model.forecast(codes, steps, self.settings.generator.sampling, generator)
        expected = (codes.shape[0], codes.shape[1], steps)
        if tuple(values.shape) != expected:
            raise ValueError(f"{type(model).__name__}.forecast returned shape {tuple(values.shape)}; expected {expected} (batch, channels, steps)")
        return values.detach().cpu(), details

    def evaluate(
        self,
        checkpoint_path: str | Path,
        out_dir: str | Path,
        tensorboard_dir: str | Path | None = None,
        source: str | Path | None = None,
        concurrent: bool = False,
    ) -> dict[str, Any]:
        """Score one checkpoint and write every output file into ``out_dir``; returns the summary.

        Args:
            checkpoint_path: the file to read (may be a hard link kept for this evaluation).
            out_dir: the evaluation's folder (created).
            tensorboard_dir: where ``eval/*`` scalars and images go; None: ``out_dir``.
            source: the checkpoint path to report (default: ``checkpoint_path``).
            concurrent: score the teacher-forced batches in a second thread, on a copy of
                the model, while this one generates, analyses and plots. Torch kernels
                release the GIL, so with one torch thread each the two halves fill two
                cores; the evaluation process uses it for the final evaluation of a run.
        """
        started = time.perf_counter()
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        model, checkpoint = self.build_model(checkpoint_path)
        step, epoch = int(checkpoint.get("global_step", 0)), int(checkpoint.get("epoch", 0))
        summary: dict[str, Any] = {
            "checkpoint": str(source or checkpoint_path),
            "step": step,
            "epoch": epoch,
            "device": str(self.device),
            "notices": list(self.notices),
        }
        scalars: dict[str, float] = {}
        images = self._score(model, out_dir, summary, scalars, concurrent)
        summary["wall_time_s"] = time.perf_counter() - started
        write_json(out_dir / "summary.json", summary)
        from brain_gen.eval.tensorboard import write_events

        write_events(Path(tensorboard_dir or out_dir), step, scalars, {f"eval/{name}": images[name] for name in ("psd", "examples") if name in images})
        return summary

    def _score(self, model: torch.nn.Module, out_dir: Path, summary: dict[str, Any], scalars: dict[str, float], concurrent: bool) -> dict[str, bytes]:
        """Fill ``summary`` and ``scalars`` with the teacher-forced scores and, for a generative model,
        the generation's analyses; writes rollouts.npz and the figures; returns the PNGs."""
        with ThreadPoolExecutor(max_workers=1) as pool:
            # A copy, so that a model's forecast that keeps state on the module cannot meet a forward pass.
            self.warm_up()
            teacher_forced = pool.submit(self.teacher_forced, copy.deepcopy(model)) if concurrent and self.generate else None
            images = self._generate_and_plot(model, out_dir, summary, scalars) if self.generate else {}
            summary["teacher_forced"] = teacher_forced.result() if teacher_forced is not None else self.teacher_forced(model)
        summary["loss"] = summary["teacher_forced"]["loss"]["mean"]
        scalars["eval/loss"] = summary["loss"]
        scalars.update({f"eval/{name}": value["mean"] for name, value in summary["teacher_forced"]["metrics"].items()})
        return images

    def _generate_and_plot(self, model: torch.nn.Module, out_dir: Path, summary: dict[str, Any], scalars: dict[str, float]) -> dict[str, bytes]:
        """Generated continuations, their analyses (into ``summary`` and ``scalars``), rollouts.npz and the figures; returns the PNGs."""
        from brain_gen.eval.analyses import compare_continuations
        from brain_gen.eval import plots

        images: dict[str, bytes] = {}
        context, real, generated, details = self.rollouts(model)
        settings = self.settings
        comparison = compare_continuations(
            generated, real, self.sfreq, analyses=settings.analyses, horizon_window_s=settings.horizon_window_s, present=self.contexts.present
        )
        summary["generation"] = {
            "mode": self.generation_mode,
            "sampling": settings.generator.sampling.model_dump(),
            "seed": settings.generator.seed,
            "rollouts_per_context": settings.generator.rollouts_per_context,
            "context_length_s": self.contexts.context_samples / self.sfreq,
            "continuation_length_s": self.contexts.continuation_samples / self.sfreq,
            "sampler_seed": settings.example_sampler.seed,
            "contexts": [
                {"session": session, "start_s": start} for session, start in zip(self.contexts.sessions, self.contexts.starts_s)
            ],
            **details,
        }
        summary["analyses"] = comparison.to_json()
        scalars.update({f"eval/{name}": value for name, value in comparison.scalars.items()})
        if "text_wellformed_rate" in details:
            scalars["eval/text_wellformed_rate"] = details["text_wellformed_rate"]
        np.savez_compressed(
            out_dir / "rollouts.npz",
            context=context,
            real=real,
            generated=generated,
            present=self.contexts.present,
            ch_names=np.array(self.layout.ch_names),
            sfreq=np.float64(self.sfreq),
            sessions=np.array(self.contexts.sessions),
            starts_s=np.array(self.contexts.starts_s),
        )
        figures = {
            "psd": plots.psd_figure(comparison) if "spectral" in settings.analyses else None,
            "covariance": plots.covariance_figure(comparison, self.layout.ch_names) if "spatial" in settings.analyses else None,
            "examples": plots.examples_figure(context, real, generated[:, 0], self.sfreq, self.layout.ch_names, settings.num_examples, present=self.contexts.present)
            if settings.num_examples > 0
            else None,
            "horizon": plots.horizon_figure(comparison) if "horizon" in settings.analyses else None,
        }
        for name, figure in figures.items():
            if figure is not None:
                png = plots.figure_png(figure)
                (out_dir / f"{name}.png").write_bytes(png)
                images[name] = png
        return images


def _to_device(value: Any, device: torch.device) -> Any:
    if torch.is_tensor(value):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(_to_device(item, device) for item in value)
    return value


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write strict JSON atomically (a reader never sees half a file); NaN and inf become null."""
    temporary = path.with_name(f".{path.name}.partial")
    temporary.write_text(json.dumps(_plain(data), indent=2, allow_nan=False))
    temporary.replace(path)


def _plain(value: Any) -> Any:
    """Plain JSON data: numpy values as Python ones, non-finite floats as None."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)

"""LitModel: the LightningModule that trains any model with any loss.

It owns what the ``lightning`` config section describes: AdamW with a decay and a
no-decay parameter group, the learning-rate schedule and its warmup, per-step
optimizer telemetry, torch.compile, and the overrides applied when a run resumes.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.precision import MixedPrecision, Precision
from pytorch_lightning.strategies import DDPStrategy, SingleDeviceStrategy
from pytorch_lightning.trainer.states import TrainerFn
from torch import nn
from torch.optim import lr_scheduler as torch_schedulers

from brain_gen.config.errors import ConfigError, NonFiniteTraining
from brain_gen.config.schema import LightningConfig
from brain_gen.dataset.order import TrainingOrder
from brain_gen.models import COMPILED_PREFIX, call_model
from brain_gen.training.performance import logs_written_this_step, write_step_scalars

log = logging.getLogger(__name__)



def scheduler_classes() -> dict[str, type]:
    """Every learning-rate scheduler class of torch.optim.lr_scheduler, by name."""
    return {
        name: value
        for name, value in vars(torch_schedulers).items()
        if isinstance(value, type)
        and issubclass(value, (torch_schedulers.LRScheduler, torch_schedulers.ReduceLROnPlateau))
        and value is not torch_schedulers.LRScheduler
        and not name.startswith("_")
    }


class LinearWarmup:
    """LambdaLR factor of a linear warmup: step k (from 0) runs at (k + 1) / steps of the base lr.

    A class rather than a lambda so that LambdaLR can store it in checkpoints.
    """

    def __init__(self, steps: int):
        self.steps = steps

    def __call__(self, step: int) -> float:
        return min(1.0, (step + 1) / self.steps)


class LitModel(pl.LightningModule):
    """Runs a model and a loss through train, validation and test steps.

    Args:
        model: a plain nn.Module. A batch is ``(inputs, targets)``; a tuple of inputs
            is unpacked into the model's positional arguments.
        loss: ``loss(outputs, targets, model=model) -> scalar`` with a ``metrics``
            dict of ``name -> callable(outputs, targets)``.
        lightning: the ``lightning`` config section (a LightningConfig or a mapping).
        hparams: values stored in checkpoints and shown in TensorBoard (the run's config).
        stop_on_non_finite: raise NonFiniteTraining at the first training step whose loss
            or gradient norm is not finite, before the optimizer step (``trainer.stop_on_non_finite``).

    Written at the optimizer steps the logger writes (``log_every_n_steps``), straight
    to the loggers: ``lr`` and ``weight_decay`` of the decay group, ``grad_norm`` (total
    L2 norm of the gradients before clipping), ``grad_clip_pct`` (running share of
    steps whose ``grad_norm`` exceeded ``grad_clip_threshold``, in percent) and the
    loss's metrics; ``train/loss`` goes through ``self.log`` (the progress bar shows it).
    """

    def __init__(
        self,
        model: nn.Module,
        loss: nn.Module,
        lightning: LightningConfig | dict[str, Any],
        hparams: dict[str, Any] | None = None,
        stop_on_non_finite: bool = True,
    ):
        super().__init__()
        self.stop_on_non_finite = stop_on_non_finite
        # Per-step metrics something reads at every step (a scheduler's or early stopping's
        # monitor): logged at every step, whatever log_every_n_steps says.
        self.monitored: set[str] = set()
        self._step_values: dict[str, torch.Tensor] = {}
        self._grad_norm: torch.Tensor | None = None
        self._train_loss: torch.Tensor | None = None
        self._batch_index = 0
        self.model = model
        self.loss_fn = loss
        self.config = lightning if isinstance(lightning, LightningConfig) else LightningConfig.model_validate(lightning)
        if hparams:
            self.save_hyperparameters(hparams)
        # The compiled wrapper is kept out of the module tree, so state_dict keys are
        # the same with and without compile and checkpoints move freely between both.
        self.__dict__["compiled_model"] = torch.compile(model) if self.config.compile else None
        self._decay_group_index: int | None = 0
        self._steps_seen = 0
        self._steps_over_threshold = torch.zeros(())
        self._step_started_at: float | None = None
        self._resume_overrides_applied = False
        self._no_decay_reported = False
        # True only inside resume_validation().
        self.validating_before_resume = False
        self.trained_batches = 0

    # ----------------------------------------------------------------- steps

    def forward(self, inputs: Any) -> torch.Tensor:
        return call_model(self.model if self.compiled_model is None else self.compiled_model, inputs)

    def _step(self, batch: Any, stage: str) -> torch.Tensor:
        return self._outputs_and_loss(batch, stage)[1]

    def _outputs_and_loss(self, batch: Any, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, targets = batch
        outputs = self(inputs)
        loss = self.loss_fn(outputs, targets, model=self.model)
        # Training logs per step, on the steps the logger writes; val and test log epoch
        # means, reduced over devices.
        per_step = stage == "train"
        log_options = dict(on_step=per_step, on_epoch=not per_step, sync_dist=not per_step, batch_size=len(targets))
        if not per_step or self._logs_now(f"{stage}/loss"):
            # Through self.log: the progress bar shows it.
            self.log(f"{stage}/loss", loss, prog_bar=True, **log_options)
        with torch.no_grad():
            for name, metric in getattr(self.loss_fn, "metrics", {}).items():
                key = f"{stage}/{name}"
                if not per_step:
                    self.log(key, metric(outputs.detach(), targets), **log_options)
                elif self._logs_now(key):
                    self._log_step_value(key, metric(outputs.detach(), targets))
        return outputs, loss

    def _log_step_value(self, name: str, value: torch.Tensor) -> None:
        """A per-step training value: written straight to the loggers at this step's end.

        self.log costs about a millisecond per value in Lightning's bookkeeping, which at
        small steps is more than the step; these values feed nothing but the logger. A
        value something monitors goes through self.log, where monitors read it.
        """
        if name in self.monitored:
            self.log(name, value, on_step=True, on_epoch=False)
        else:
            self._step_values[name] = value.detach()

    def _logs_now(self, name: str) -> bool:
        """Whether per-step value ``name`` is computed and logged at this training step.

        Only on the steps the logger writes (``log_every_n_steps``): a value logged on
        other steps would cost its computation and Lightning's bookkeeping and never be
        written. At every step for the metrics a scheduler or early stopping reads
        (``monitored``), and ``train/loss`` also at an epoch's last batch, so that what
        is read at the epoch's end (the progress bar, callbacks) is that batch's value.
        """
        trainer = self.trainer
        if name in self.monitored or logs_written_this_step(trainer):
            return True
        return name == "train/loss" and trainer.is_last_batch

    def trial_step(self, batch: Any) -> tuple[Any, torch.Tensor]:
        """Outputs and loss of one batch in eval mode without gradients (and without compiling), to check fit."""
        inputs, targets = batch
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                outputs = call_model(self.model, inputs)
                return outputs, self.loss_fn(outputs, targets, model=self.model)
        finally:
            self.model.train(was_training)

    def training_bytes(self, batch: Any) -> int:
        """Memory one training step on ``batch`` holds at its peak, beyond parameters and optimizer state.

        Counts every non-parameter tensor autograd saves for the backward pass (the activations), the
        outputs, and the batch itself, then doubles the activations for the gradients
        that flow through them during backward. Used to bound batch-size searches on CPU.
        """
        inputs, targets = batch
        saved: dict[tuple[int, int], int] = {}
        # Weights saved for backward (or views of them) are not per-window memory.
        parameter_memory = {parameter.data_ptr() for parameter in self.model.parameters()}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            if tensor.data_ptr() not in parameter_memory:
                saved[(tensor.data_ptr(), tensor.numel())] = tensor.numel() * tensor.element_size()
            return tensor

        was_training = self.model.training
        self.model.train()
        try:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
                outputs = call_model(self.model, inputs)
                loss = self.loss_fn(outputs, targets, model=self.model)
            loss.backward()
        finally:
            self.model.zero_grad(set_to_none=True)
            self.model.train(was_training)

        def size(value: Any) -> int:
            if torch.is_tensor(value):
                return value.numel() * value.element_size()
            return sum(size(item) for item in value) if isinstance(value, (tuple, list)) else 0

        return 2 * sum(saved.values()) + size(outputs) + size(batch)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.trained_batches += 1
        loss = self._step(batch, "train")
        self._train_loss, self._batch_index = loss.detach(), batch_idx
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        """The loss, and the model's outputs for the test report (``outputs`` of ``on_test_batch_end``)."""
        outputs, loss = self._outputs_and_loss(batch, "test")
        return {"loss": loss, "outputs": outputs.detach()}

    def logged_metric_names(self, with_validation: bool = True) -> list[str]:
        """Every metric name this module logs during fit, for checking monitors early."""
        stages = ("train", "val") if with_validation else ("train",)
        names = [f"{stage}/{metric}" for stage in stages for metric in ("loss", *getattr(self.loss_fn, "metrics", {}))]
        names += ["lr", "weight_decay", "grad_norm", "grad_clip_pct"]
        if self.config.benchmark_train_step:
            names.append("perf/train_step_ms")
        return names

    # ----------------------------------------------------------------- optimizer

    def parameter_groups(self) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
        """(decay, no_decay) named parameters. No decay: biases, norm weights, every 1-D parameter."""
        norm_types = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
        in_norm = {
            id(parameter)
            for module in self.model.modules()
            if isinstance(module, norm_types)
            for parameter in module.parameters(recurse=False)
        }
        decay, no_decay = [], []
        for name, parameter in self.model.named_parameters():
            if not parameter.requires_grad:
                continue
            if parameter.ndim <= 1 or name.endswith("bias") or id(parameter) in in_norm:
                no_decay.append((name, parameter))
            else:
                decay.append((name, parameter))
        return decay, no_decay

    def configure_optimizers(self) -> Any:
        config = self.config
        decay, no_decay = self.parameter_groups()
        if config.no_decay_verbose and not self._no_decay_reported and self.global_rank == 0:
            self._no_decay_reported = True
            print(f"no weight decay for {len(no_decay)} parameter(s): {', '.join(name for name, _ in no_decay)}")
        groups = [
            {"params": [p for _, p in decay], "weight_decay": config.weight_decay},
            {"params": [p for _, p in no_decay], "weight_decay": 0.0},
        ]
        groups = [group for group in groups if group["params"]]
        # Telemetry reports group 0: the decay group, or the only group of a model without one.
        self._decay_group_index = 0 if decay else None
        optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
        scheduler = self._build_scheduler(optimizer)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def _build_scheduler(self, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
        schedule, warmup = self.config.lr_scheduler, self.config.lr_warmup
        if schedule is None and warmup is None:
            return None
        if schedule is not None and schedule.interval != self.config.schedule_interval:
            log.info(
                "lightning.lr_scheduler.interval is not set: %s steps per %s, like lr_warmup.interval",
                schedule.class_name,
                self.config.schedule_interval,
            )
        main = None
        if schedule is not None:
            main = scheduler_classes()[schedule.class_name](optimizer, **schedule.constructor_kwargs)
        if warmup is not None:
            ramp = torch_schedulers.LambdaLR(optimizer, LinearWarmup(warmup.steps))
            if main is not None:
                # SequentialLR restarts the main schedule at the milestone, from the base lr.
                main = torch_schedulers.SequentialLR(optimizer, [ramp, main], milestones=[warmup.steps])
            else:
                main = ramp
        return {
            "scheduler": main,
            "interval": self.config.schedule_interval,
            "frequency": schedule.frequency if schedule is not None else 1,
            "monitor": schedule.monitor if schedule is not None else None,
        }

    # ----------------------------------------------------------------- telemetry

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Lightning calls this after gradients are unscaled and before they are clipped.
        group = optimizer.param_groups[0]
        # Filled on the device: logging a Python float would copy it over and wait for the GPU.
        for name in ("lr", "weight_decay"):
            if self._logs_now(name):
                self._log_step_value(name, torch.full((), float(group[name]), device=self.device))
        # Every step: the finiteness check and the clipping share count need it. The
        # optimizer's own list holds the model's trainable parameters, without a walk
        # over the module tree (a tenth of a millisecond a step for a small transformer).
        gradients = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        grad_norm = total_norm(gradients) if gradients else None
        self._grad_norm = grad_norm  # reused by configure_gradient_clipping, which Lightning calls next
        if self.stop_on_non_finite:
            self._stop_if_not_finite(grad_norm)
        if grad_norm is None:
            return
        if self._steps_over_threshold.device != grad_norm.device:
            self._steps_over_threshold = self._steps_over_threshold.to(grad_norm.device)
        # Counted on the device: no host sync here, only when the logger reads the value.
        self._steps_over_threshold += (grad_norm > self.config.grad_clip_threshold).float()
        self._steps_seen += 1
        if self._logs_now("grad_norm"):
            self._log_step_value("grad_norm", grad_norm)
        if self._logs_now("grad_clip_pct"):
            self._log_step_value("grad_clip_pct", self._steps_over_threshold * (100.0 / self._steps_seen))

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        """Clip by norm with the norm on_before_optimizer_step has just computed, instead of a second pass.

        Only where every gradient is whole on this process (one device, or DDP after its
        all-reduce) and the precision plugin clips plainly; otherwise Lightning's own clipping.
        """
        norm, self._grad_norm = self._grad_norm, None
        plain = type(self.trainer.precision_plugin) in (Precision, MixedPrecision) and isinstance(self.trainer.strategy, (SingleDeviceStrategy, DDPStrategy))
        if (
            norm is not None
            and gradient_clip_val
            and gradient_clip_algorithm in (None, "norm")
            and plain
            and hasattr(torch.nn.utils, "clip_grads_with_norm_")
        ):
            parameters = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            torch.nn.utils.clip_grads_with_norm_(parameters, float(gradient_clip_val), norm)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def _stop_if_not_finite(self, grad_norm: torch.Tensor | None) -> None:
        """Raise NonFiniteTraining when this step's loss or gradient norm is NaN or infinite.

        Checked before the optimizer step (and clipping), so the weights and every
        checkpoint keep the last finite state. One host sync per step; under DDP the
        ranks agree, so that all stop together. A gradient scaler (precision 16-mixed)
        skips steps with overflowing gradients itself: there only the loss counts.
        """
        loss = self._train_loss
        if loss is None:
            return
        scaled = "16-mixed" in str(self.trainer.precision) and "bf16" not in str(self.trainer.precision)
        check_gradients = grad_norm is not None and not scaled
        finite = torch.isfinite(loss) & torch.isfinite(grad_norm) if check_gradients else torch.isfinite(loss)
        bad = not bool(finite)
        if self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        if not bad:
            return
        where = f"at step {self.trainer.global_step} (epoch {self.trainer.current_epoch}, batch {self._batch_index} of the epoch{self._batch_windows()})"
        if not bool(torch.isfinite(loss)):
            what = f"train/loss is {float(loss)}"
        elif check_gradients and not bool(torch.isfinite(grad_norm)):
            what = f"grad_norm is {float(grad_norm)} while train/loss is finite ({float(loss):.4g})"
        else:
            what = "another process's train/loss or gradients are not finite"
        raise NonFiniteTraining(
            f"training stopped: {what} {where}; the weights were not updated and no checkpoint was written from this step, "
            "so resume_from: last continues from the last finite state (lower lightning.lr, or check the data); "
            "trainer.stop_on_non_finite: false trains on regardless"
        )

    def _batch_windows(self, listed: int = 6) -> str:
        """``: windows SESSION at T s, ...`` of the batch in training, where its loader and dataset can say."""
        loader = self.trainer.train_dataloader
        order, dataset = getattr(loader, "sampler", None), getattr(loader, "dataset", None)
        if not isinstance(order, TrainingOrder) or not hasattr(dataset, "locate"):
            return ""
        places = [dataset.locate(index) for index in order.batch_indices(order.epoch, self._batch_index, loader.batch_size)]
        shown = ", ".join(f"{session} at {start:.2f} s" for session, start in places[:listed])
        more = f" and {len(places) - listed} more" if len(places) > listed else ""
        return f": windows {shown}{more}"

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.config.benchmark_train_step:
            self._synchronize()
            self._step_started_at = time.perf_counter()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.config.benchmark_train_step and self._step_started_at is not None:
            self._synchronize()
            self.log("perf/train_step_ms", (time.perf_counter() - self._step_started_at) * 1000.0, on_step=True, on_epoch=False)
        values, self._step_values = self._step_values, {}
        write_step_scalars(self.trainer, batch_idx, values)

    def _synchronize(self) -> None:
        # Without a sync, CUDA kernels still running would be left out of the step time.
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["grad_clip_counts"] = {"steps": self._steps_seen, "over_threshold": float(self._steps_over_threshold)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        counts = checkpoint.get("grad_clip_counts")
        if counts:
            self._steps_seen = int(counts["steps"])
            self._steps_over_threshold = torch.tensor(float(counts["over_threshold"]))
        # Checkpoints written by tools that compiled the model itself carry a prefix.
        state = checkpoint.get("state_dict", {})
        for key in [key for key in state if COMPILED_PREFIX in key]:
            state[key.replace(COMPILED_PREFIX, "")] = state.pop(key)

    # ----------------------------------------------------------------- resume overrides

    def on_validation_start(self) -> None:
        # During fit, the sanity check is the first thing to run after the checkpoint is restored.
        self._apply_resume_overrides()

    @contextlib.contextmanager
    def resume_validation(self):
        """Mark the validation pass that checks restored weights before training resumes,
        so that the resume overrides apply to it too; unmarked however the pass ends."""
        self.validating_before_resume = True
        try:
            yield
        finally:
            self.validating_before_resume = False

    def on_train_start(self) -> None:
        self._apply_resume_overrides()

    def _apply_resume_overrides(self) -> None:
        trainer = self.trainer
        stage_resumes = trainer.state.fn == TrainerFn.FITTING or (
            trainer.state.fn == TrainerFn.VALIDATING and self.validating_before_resume
        )
        if self._resume_overrides_applied or not stage_resumes or not trainer.ckpt_path:
            return
        # The validation before a resume restores the weights once more for fit: apply again then.
        self._resume_overrides_applied = trainer.state.fn == TrainerFn.FITTING
        config = self.config
        if config.resume_context is not None:
            request = config.resume_context.model_dump(exclude_none=True)
            try:
                self.model.resize_context(**request)
            except ValueError as exc:
                raise ConfigError(f"lightning.resume_context: {exc}") from exc
            log.info("resume: context resized with %s", request)
        if config.resume_token_corruption is not None:
            try:
                self.model.update_token_corruption_cfg(config.resume_token_corruption)
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"lightning.resume_token_corruption: {exc}") from exc
            log.info("resume: token corruption set to %s", config.resume_token_corruption)
        for optimizer in trainer.optimizers:
            for index, group in enumerate(optimizer.param_groups):
                if config.resume_lr is not None:
                    group["lr"] = group["initial_lr"] = config.resume_lr
                if config.resume_weight_decay is not None and index == self._decay_group_index:
                    group["weight_decay"] = config.resume_weight_decay
        if config.resume_weight_decay is not None and self._decay_group_index is None:
            log.warning("resume: the model has no parameters with weight decay; resume_weight_decay changes nothing")
        elif config.resume_weight_decay is not None:
            log.info("resume: weight_decay of the decay group set to %g", config.resume_weight_decay)
        if config.resume_lr is not None:
            log.info("resume: lr set to %g, and every scheduler's base lr with it", config.resume_lr)
            for scheduler_config in trainer.lr_scheduler_configs:
                for scheduler in nested_schedulers(scheduler_config.scheduler):
                    if hasattr(scheduler, "base_lrs"):
                        scheduler.base_lrs = [config.resume_lr] * len(scheduler.base_lrs)
                    if hasattr(scheduler, "_last_lr"):
                        scheduler._last_lr = [config.resume_lr] * len(scheduler._last_lr)


def nested_schedulers(scheduler: Any) -> list[Any]:
    """A scheduler and, for SequentialLR / ChainedScheduler, every scheduler inside it."""
    found = [scheduler]
    for child in getattr(scheduler, "_schedulers", []):
        found.extend(nested_schedulers(child))
    return found


def total_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """L2 norm over all tensors together, with fused per-device norms (no Python loop over norms)."""
    if hasattr(torch.nn.utils, "get_total_norm"):
        return torch.nn.utils.get_total_norm(tensors, norm_type=2.0, foreach=True)
    norms = torch._foreach_norm(tensors)  # torch < 2.6
    return torch.linalg.vector_norm(torch.stack([norm.to(norms[0].device) for norm in norms]))

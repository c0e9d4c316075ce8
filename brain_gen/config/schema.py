"""The config schema: one pydantic model per section, the single source of truth.

Every key a user can write is declared here with its type, default and a
description. Code elsewhere reads typed attributes of these models; it never
looks keys up with ``dict.get(key, default)``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, field_validator, model_validator


def _reject_bool(value: Any) -> Any:
    # pydantic would read `true` as 1; in a number field it is a mistake, not a number.
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value}")
    return value


# Numbers that accept YAML numbers and numeric strings (PyYAML reads `3e-4` as a string), but not booleans.
Int = Annotated[int, BeforeValidator(_reject_bool)]
Float = Annotated[float, BeforeValidator(_reject_bool)]
PositiveFloat = Annotated[float, BeforeValidator(_reject_bool), Field(gt=0)]


# Special tokens of the BPE tokenizers that `brain-gen tokenizer-text` trains (role -> token).
# Here rather than in brain_gen.dataset.text so that the command line reads them without importing torch.
DEFAULT_SPECIAL_TOKENS = {"pad_token": "[PAD]", "sep_token": "[SEP]", "bos_token": "[BOS]", "unk_token": "[UNK]"}

class Section(BaseModel):
    """Base for config sections: unknown keys are errors, values are re-checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def explicitly_set(self, key: str) -> bool:
        """Whether the user wrote ``key`` (as opposed to it taking its default)."""
        return key in self.model_fields_set


# --------------------------------------------------------------------------- datasplitter


class DataSplitterConfig(Section):
    """Where the sessions are, how they are cut into windows and split."""

    dataset_root: str | list[str] | dict[str, str] = Field(
        description="Folder of session folders; a list of such folders; or a mapping "
        "from a dataset name to its folder. Datasets are named by their folder name "
        "unless a mapping names them."
    )
    example_seconds: Float = Field(gt=0, description="Length of one training window, in seconds.")
    overlap_seconds: Float = Field(
        default=0.0, ge=0, description="Overlap between consecutive windows of a chunk, in seconds."
    )
    val_ratio: Float = Field(default=0.1, ge=0, lt=1, description="Share of sessions (or subjects) for validation.")
    test_ratio: Float = Field(default=0.1, ge=0, lt=1, description="Share of sessions (or subjects) for testing.")
    seed: Int = Field(default=42, description="Seed of the split shuffle; the same seed gives the same split.")
    dataset_class: str = Field(
        default="ChunkDataset",
        description="Dataset built on each split: a built-in name (ChunkDataset, "
        "ChunkDatasetContinuous, ChunkDatasetClassification, BPEDataset) or an import path `package.module:Class`.",
    )
    dataset_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments for the dataset class constructor."
    )
    cache_dir: str | None = Field(
        default=None,
        description="Folder for the session metadata cache. Default: `<save_dir>/cache`.",
    )
    refresh_cache: bool = Field(default=False, description="Rescan every session and rebuild the cache.")
    split_strategy: Literal["session", "subject", "dataset"] = Field(
        default="session",
        description="Unit kept whole inside one split: a session, a subject, or a whole "
        "dataset (`heldout_dataset` becomes val and test).",
    )
    heldout_dataset: str | None = Field(
        default=None,
        description="With split_strategy `dataset`: the dataset name held out for "
        "validation and test, split 50/50 between them by subject.",
    )

    @model_validator(mode="after")
    def _check_consistency(self) -> DataSplitterConfig:
        if self.overlap_seconds >= self.example_seconds:
            raise ValueError(
                f"overlap_seconds ({self.overlap_seconds}) must be smaller than "
                f"example_seconds ({self.example_seconds})"
            )
        if self.split_strategy == "dataset":
            if self.heldout_dataset is None:
                raise ValueError("split_strategy 'dataset' needs heldout_dataset: the name of the dataset to hold out")
            for key in ("val_ratio", "test_ratio"):
                if self.explicitly_set(key):
                    raise ValueError(
                        f"{key} is not used with split_strategy 'dataset' (the held-out dataset "
                        "is split 50/50 into val and test); remove it"
                    )
        elif self.heldout_dataset is not None:
            raise ValueError("heldout_dataset is only used with split_strategy 'dataset'; remove it or set the strategy")
        if self.val_ratio + self.test_ratio >= 1:
            raise ValueError(
                f"val_ratio + test_ratio must be below 1 so that training keeps data (got "
                f"{self.val_ratio} + {self.test_ratio})"
            )
        return self


# --------------------------------------------------------------------------- dataloader


class LoaderOptions(Section):
    """The extra keyword arguments of one loader class, typed, with their defaults written once."""

    @classmethod
    def take(cls, options: LoaderOptions | None, keywords: dict[str, Any]) -> LoaderOptions:
        """``options``, or one built from (and removed from) ``keywords``: a loader accepts either."""
        values = {key: keywords.pop(key) for key in list(keywords) if key in cls.model_fields}
        if options is not None and values:
            raise TypeError(f"give {cls.__name__} or its keys ({', '.join(values)}), not both")
        return options if options is not None else cls(**values)


class MixupOptions(LoaderOptions):
    """What MixupDataLoader and its collate read."""

    mixup_alpha: Float = Field(
        default=0.0, ge=0, description="MixupDataLoader: alpha of the Beta(alpha, alpha) mixing weight; 0 never mixes."
    )
    mixup_prob: Float = Field(default=1.0, ge=0, le=1, description="MixupDataLoader: chance that a batch is mixed.")
    num_classes: Int | None = Field(
        default=None, ge=1, description="MixupDataLoader: class count for one-hot mixing of integer targets."
    )
    quantize: bool = Field(default=False, description="MixupDataLoader: mu-law quantize inputs after mixing.")
    mu: Int = Field(default=255, ge=1, description="MixupDataLoader: mu-law parameter when quantize is true.")
    max_val: Float = Field(default=10.0, gt=0, description="MixupDataLoader: inputs are divided by this before quantizing.")


class TextOptions(LoaderOptions):
    """What TextDataLoader and its collate read."""

    tokenizer_path: str | None = Field(
        default=None, description="TextDataLoader (required): folder that holds a trained `tokenizer/`."
    )
    max_length: Int | None = Field(
        default=None, ge=1, description="TextDataLoader: at most this many input tokens per sample; longer ones are cut."
    )
    use_separator: bool = Field(
        default=True, description="TextDataLoader: put separator tokens between channels and groups."
    )


# The built-in loaders that take extra keys, and the typed options those keys make.
LOADER_OPTIONS: dict[str, type[LoaderOptions]] = {"MixupDataLoader": MixupOptions, "TextDataLoader": TextOptions}


class LoaderBasics(Section):
    """The keyword arguments every loader takes."""

    batch_size: Int = Field(default=1, ge=1, description="Windows per batch for train, val and test.")
    num_workers: Int = Field(default=0, ge=0, description="Worker processes that load batches (0: main process).")
    prefetch_factor: Int | None = Field(
        default=2, ge=1, description="Batches each worker loads ahead; used only when num_workers > 0."
    )
    pin_memory: bool = Field(default=False, description="Put batches in page-locked memory for faster GPU copies.")
    persistent_workers: bool = Field(
        default=False, description="Keep workers alive between epochs; needs num_workers > 0."
    )
    drop_last: bool = Field(
        default=False,
        description="Drop the last incomplete training batch. Validation and test always see every window.",
    )


# The spec keeps every loader's keys flat in one `dataloader` section. The bases are listed
# in reverse, because pydantic orders fields from the last base to the first: basics,
# then MixUp's keys, then the text keys.
class DataLoaderConfig(TextOptions, MixupOptions, LoaderBasics):
    """Keyword arguments of the train/val/test loaders, plus the extras of each loader class."""

    def options(self, loader: str) -> LoaderOptions:
        """The typed options of a built-in loader (``MixupDataLoader``, ``TextDataLoader``) from these keys."""
        options_class = LOADER_OPTIONS[loader]
        return options_class(**{key: getattr(self, key) for key in options_class.model_fields})

    def inapplicable_keys(self, loader: str | None) -> list[str]:
        """The extra keys of every built-in loader other than ``loader`` (None: of them all)."""
        return [key for name, options_class in LOADER_OPTIONS.items() if name != loader for key in options_class.model_fields]

    def misplaced_keys(self, loader: str | None, dataloader_class: str) -> list[str]:
        """Problems, one per extra key written for a loader other than ``loader``, the built-in
        loader that ``dataloader_class`` is or extends (None: neither)."""
        owners = {key: name for name, options_class in LOADER_OPTIONS.items() for key in options_class.model_fields}
        return [
            f"dataloader.{key} is only used by {owners[key]}, but dataloader_class is {dataloader_class}; "
            f"remove the key or set dataloader_class: {owners[key]}"
            for key in self.inapplicable_keys(loader)
            if self.explicitly_set(key)
        ]

    @model_validator(mode="after")
    def _check_workers(self) -> DataLoaderConfig:
        if self.persistent_workers and self.num_workers == 0:
            raise ValueError("persistent_workers needs num_workers > 0; set num_workers or drop persistent_workers")
        return self


# --------------------------------------------------------------------------- lightning


class LRSchedulerConfig(BaseModel):
    """A scheduler from torch.optim.lr_scheduler; unlisted keys go to its constructor."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    class_name: str = Field(description="Class name in torch.optim.lr_scheduler, e.g. CosineAnnealingLR.")
    interval: Literal["epoch", "step"] = Field(default="epoch", description="Step the scheduler every epoch or every optimizer step.")
    frequency: Int = Field(default=1, ge=1, description="Step the scheduler every this many intervals.")
    monitor: str | None = Field(default=None, description="Logged metric the scheduler reads (ReduceLROnPlateau).")

    @property
    def constructor_kwargs(self) -> dict[str, Any]:
        """The keys that go to the scheduler's constructor."""
        return dict(self.model_extra or {})


class LRWarmupConfig(Section):
    """Linear learning-rate warmup before the scheduler takes over."""

    steps: Int = Field(ge=1, description="Length of the warmup, in intervals.")
    interval: Literal["epoch", "step"] | None = Field(
        default=None,
        description="Warm up per `step` or per `epoch`. Warmup and scheduler step together: an interval "
        "written on the scheduler wins, else this one applies to both; default: the scheduler's, else `step`.",
    )


class ResumeContextConfig(Section):
    """New context geometry applied to the model with `resize_context` when resuming."""

    input_shape: list[Int] | None = Field(default=None, description="New input shape, e.g. [channels, time].")
    spatial_reduction: Int | None = Field(default=None, description="New spatial reduction factor.")
    temporal_reduction: Int | None = Field(default=None, description="New temporal reduction factor.")
    rope_theta: Float | None = Field(default=None, description="New rotary embedding base.")
    max_position_embeddings: Int | None = Field(default=None, description="New maximum sequence length.")


class LightningConfig(Section):
    """Optimizer, schedules and per-step options of LitModel."""

    # Zero is a valid torch learning rate (a frozen run, a schedule that starts at 0).
    lr: Float = Field(ge=0, description="Learning rate of AdamW.")
    weight_decay: Float = Field(ge=0, description="Weight decay of AdamW.")
    resume_lr: Float | None = Field(
        default=None, ge=0, description="After resuming: the optimizer's lr and every scheduler's base lr become this."
    )
    resume_weight_decay: Float | None = Field(
        default=None, ge=0, description="After resuming: the decay group's weight decay becomes this (no-decay stays 0)."
    )
    resume_context: ResumeContextConfig | None = Field(
        default=None, description="After resuming, resize the model's context (needs `resize_context`)."
    )
    resume_token_corruption: dict[str, Any] | None = Field(
        default=None,
        description=(
            "After resuming, replace the token corruption settings with this mapping; true reuses "
            "model_config.token_corruption_cfg (corruption off, `{enabled: false}`, where it is not set); false is null."
        ),
        json_schema_extra={"accepts": "mapping | bool | null"},
    )
    compile: bool = Field(default=False, description="Wrap the model with torch.compile.")
    benchmark_train_step: bool = Field(
        default=False, description="Log perf/train_step_ms every step (synchronizes the device)."
    )
    no_decay_verbose: bool = Field(default=False, description="Print the parameters that get no weight decay.")
    grad_clip_threshold: Float = Field(
        default=1.0, ge=0, description="Gradient norm above which a step counts toward grad_clip_pct (0: every step with a gradient)."
    )
    lr_scheduler: LRSchedulerConfig | None = Field(default=None, description="Learning-rate scheduler.")
    lr_warmup: LRWarmupConfig | None = Field(
        default=None, description="Linear warmup: a number of steps, or a mapping with steps and interval."
    )

    @field_validator("resume_token_corruption", mode="before")
    @classmethod
    def _token_corruption_mapping_or_none(cls, value: Any) -> Any:
        # Normalised here, so that code only asks `is not None`. A whole experiment config
        # turns `true` into model_config.token_corruption_cfg before this runs.
        if value is False:
            return None
        if value is True:
            raise ValueError("true reuses model_config.token_corruption_cfg, which only a whole experiment config has; give the settings as a mapping")
        return value

    @field_validator("lr_warmup", mode="before")
    @classmethod
    def _warmup_from_int(cls, value: Any) -> Any:
        # The short form `lr_warmup: 500` means 500 warmup steps.
        if isinstance(value, int) and not isinstance(value, bool):
            return {"steps": value}
        return value

    @model_validator(mode="after")
    def _check_schedule(self) -> LightningConfig:
        scheduler, warmup = self.lr_scheduler, self.lr_warmup
        plateau = scheduler is not None and scheduler.class_name == "ReduceLROnPlateau"
        if plateau and scheduler.monitor is None:
            raise ValueError("lr_scheduler.monitor is required by ReduceLROnPlateau; name a logged metric such as val/loss")
        if warmup is not None and plateau:
            raise ValueError("lr_warmup cannot be combined with ReduceLROnPlateau; remove one of them")
        if (
            warmup is not None
            and scheduler is not None
            and warmup.interval is not None
            and "interval" in scheduler.model_fields_set
            and warmup.interval != scheduler.interval
        ):
            raise ValueError(
                f"lr_warmup.interval ({warmup.interval}) differs from lr_scheduler.interval ({scheduler.interval}); "
                "warmup and schedule step together, so use one interval or leave one of them out"
            )
        return self

    @property
    def schedule_interval(self) -> Literal["epoch", "step"]:
        """How often warmup and scheduler step: they always step together.

        An interval written on the scheduler wins, then one written on the warmup, then
        the scheduler's default (`epoch`); a warmup alone steps per `step`.
        """
        scheduler, warmup = self.lr_scheduler, self.lr_warmup
        if scheduler is not None and "interval" in scheduler.model_fields_set:
            return scheduler.interval
        if warmup is not None and warmup.interval is not None:
            return warmup.interval
        return scheduler.interval if scheduler is not None else "step"

    def resume_keys_set(self) -> list[str]:
        """The resume_* keys that ask for something."""
        asked = {
            "resume_lr": self.resume_lr is not None,
            "resume_weight_decay": self.resume_weight_decay is not None,
            "resume_context": self.resume_context is not None,
            "resume_token_corruption": self.resume_token_corruption is not None,
        }
        return [key for key, is_set in asked.items() if is_set]


# --------------------------------------------------------------------------- trainer


class EarlyStoppingConfig(Section):
    """Options of Lightning's EarlyStopping callback."""

    monitor: str = Field(default="val/loss", description="Logged metric to watch.")
    mode: Literal["min", "max"] = Field(default="min", description="Whether lower or higher is better.")
    patience: Int = Field(default=10, ge=0, description="Checks without improvement before stopping.")
    min_delta: Float = Field(default=0.0, description="Smallest change that counts as an improvement.")
    check_on_train_epoch_end: bool = Field(default=False, description="Check at the end of the training epoch instead of after validation.")
    stopping_threshold: Float | None = Field(default=None, description="Stop as soon as the metric reaches this value.")
    divergence_threshold: Float | None = Field(default=None, description="Stop as soon as the metric gets worse than this value.")
    strict: bool | None = Field(default=None, description="Fail when the monitored metric is missing.")
    verbose: bool | None = Field(default=None, description="Print a message at every check.")
    check_finite: bool | None = Field(default=None, description="Stop when the metric becomes NaN or infinite.")
    log_rank_zero_only: bool | None = Field(default=None, description="Print stopping messages from rank zero only.")


TRAINER_CUSTOM_KEYS = (
    "tune_batch_size", "early_stopping", "checkpoint_cadence_epochs", "validate_before_resume", "callbacks", "fsdp_state_dict_type",
    "stop_on_non_finite",
)

# The names pytorch_lightning registers for its FSDPStrategy (kept here so that the
# schema does not import Lightning; a test holds them equal).
FSDP_STRATEGIES = ("fsdp", "fsdp_cpu_offload")


class TrainerConfig(BaseModel):
    """brain-gen's own trainer keys; every other key goes to pytorch_lightning.Trainer."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    tune_batch_size: bool = Field(default=True, description="Search the largest batch size that fits before training.")
    early_stopping: EarlyStoppingConfig | None = Field(
        default=None,
        description="Early stopping: true for the defaults, a number for the patience, or a mapping of options.",
    )
    checkpoint_cadence_epochs: Int | None = Field(
        default=None, ge=1, description="Write last-checkpoint only every this many epochs."
    )
    validate_before_resume: bool = Field(default=False, description="Validate the restored weights before training resumes.")
    callbacks: list[Any] = Field(default_factory=list, description="Extra Lightning callbacks appended to the built-in ones.")
    stop_on_non_finite: bool = Field(
        default=True,
        description="Stop at the first training step whose loss or gradient norm is NaN or infinite, before the "
        "optimizer applies it and without writing a checkpoint of that state (exit status 3). false trains on regardless. "
        "Under precision 16-mixed only the loss is checked: its gradient scaler skips steps with overflowing gradients by design.",
    )
    fsdp_state_dict_type: Literal["full", "sharded"] = Field(
        default="full",
        description="With strategy fsdp: checkpoints as one file with the whole model, gathered on rank zero (full), "
        "or as a folder with one shard per process, written by all at once (sharded; resumable under FSDP only).",
    )

    @model_validator(mode="after")
    def _fsdp_keys_need_fsdp(self) -> TrainerConfig:
        # "full" is what every other strategy writes anyway (and what a saved config.yaml holds).
        if self.fsdp_state_dict_type == "sharded" and self.lightning_kwargs.get("strategy") not in FSDP_STRATEGIES:
            raise ValueError(
                f"fsdp_state_dict_type: sharded is only used with strategy {' or '.join(FSDP_STRATEGIES)}; remove it or set trainer.strategy"
            )
        return self

    @field_validator("early_stopping", mode="before")
    @classmethod
    def _early_stopping_short_forms(cls, value: Any) -> Any:
        # `true` means the defaults, a bare number is the patience, `false` switches it off.
        if value is True:
            return {}
        if value is False:
            return None
        if isinstance(value, int):
            return {"patience": value}
        return value

    @property
    def lightning_kwargs(self) -> dict[str, Any]:
        """The keys handed to pytorch_lightning.Trainer unchanged."""
        return dict(self.model_extra or {})

    def explicitly_set(self, key: str) -> bool:
        """Whether the user wrote ``key`` (as opposed to it taking its default)."""
        return key in self.model_fields_set


# --------------------------------------------------------------------------- prepare

PICK_GROUPS = ("data", "meg", "eeg", "mag", "grad", "seeg", "ecog")


class PrepareConfig(Section):
    """How `brain-gen prepare` turns raw recordings into sessions (all steps run through MNE-Python)."""

    picks: str | list[str] = Field(
        default="data",
        description="Channels to keep: a group (data, meg, eeg, mag, grad, seeg, ecog) or a list of channel names, kept in that order.",
    )
    exclude_bads: bool = Field(default=True, description="Drop the channels the file marks as bad.")
    events: Literal["auto", "annotations", "stim", "both"] = Field(
        default="auto",
        description="Where events.tsv comes from: the file's annotations, its trigger channel, both, or "
        "auto (annotations when there are any, else the trigger channel; they often hold the same events).",
    )
    detect_bads: bool = Field(
        default=True,
        description="Also drop flat channels, and channels whose robust z-scored log standard deviation "
        "among channels of their type exceeds noisy_z (needs 3 or more channels of a type).",
    )
    noisy_z: Float = Field(default=5.0, gt=0, description="Threshold of the noisy-channel detection, in robust z units.")
    l_freq: Float | None = Field(default=0.5, gt=0, description="High-pass edge of the band-pass filter, in Hz; null: none.")
    h_freq: Float | None = Field(default=None, gt=0, description="Low-pass edge of the band-pass filter, in Hz; null: none.")
    notch: PositiveFloat | list[PositiveFloat] | None = Field(
        default=None,
        description="Line frequency in Hz (e.g. 50 or 60): it and its harmonics below Nyquist are notched out. "
        "A list gives the frequencies explicitly; null: no notch.",
    )
    resample: Float | None = Field(default=None, gt=0, description="New sampling frequency, in Hz; null keeps the file's.")
    normalize: bool = Field(
        default=True, description="Robust z-score per channel and session: subtract the median, divide by the IQR / 1.349."
    )
    clip: Float | None = Field(default=10.0, gt=0, description="Clip values to [-clip, clip] after normalizing; null: no clip.")
    chunk_seconds: Float = Field(default=60.0, gt=0, description="Length of each chunk file, in seconds.")
    dtype: Literal["float32", "float16"] = Field(default="float32", description="Storage type of the chunks.")

    @field_validator("picks")
    @classmethod
    def _check_picks(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, str) and value not in PICK_GROUPS:
            raise ValueError(f"expected one of {', '.join(PICK_GROUPS)} or a list of channel names, got {value!r}")
        if isinstance(value, list) and not value:
            raise ValueError("the list of channel names is empty")
        return value

    @model_validator(mode="after")
    def _check_float16_needs_normalize(self) -> PrepareConfig:
        if self.dtype == "float16" and not self.normalize:
            raise ValueError(
                "dtype float16 needs normalize: true; raw values in volts or tesla (1e-13 to 1e-4) "
                "underflow float16, so keep float32 or normalize"
            )
        return self

    @model_validator(mode="after")
    def _check_band(self) -> PrepareConfig:
        if self.l_freq is not None and self.h_freq is not None and self.l_freq >= self.h_freq:
            raise ValueError(f"l_freq ({self.l_freq} Hz) must be below h_freq ({self.h_freq} Hz)")
        return self


# --------------------------------------------------------------------------- eval_runner

# Keys of the reference toolkit's cloud evaluation: accepted, with a notice that evaluations run locally.
EVAL_CLOUD_KEYS = ("use_modal", "modal_app", "modal_function", "modal_env")
EVAL_ANALYSES = ("spectral", "spatial", "amplitude", "horizon")


class SamplingConfig(Section):
    """How the next code (or token) is drawn from the model's logits while generating."""

    strategy: Literal["argmax", "roulette", "top_k", "top_p"] = Field(
        default="top_p",
        description="argmax: the most likely code; roulette: a draw from the whole distribution; "
        "top_k: a draw among the k most likely; top_p: a draw from the smallest set whose probability reaches top_p.",
    )
    temperature: Float = Field(
        default=1.0, ge=0, description="Logits are divided by this before drawing; 0 (or close to it) behaves as argmax."
    )
    top_k: Int = Field(default=0, ge=0, description="Codes kept by strategy top_k (at least 1 with that strategy).")
    top_p: Float = Field(default=0.9, gt=0, le=1, description="Probability mass kept by strategy top_p.")

    @model_validator(mode="after")
    def _check_top_k(self) -> SamplingConfig:
        if self.strategy == "top_k" and self.top_k < 1:
            raise ValueError("strategy top_k needs top_k of at least 1")
        return self


class ExampleSamplerConfig(Section):
    """Which real recordings the evaluation continues: one context per session drawn."""

    seed: Int | None = Field(
        default=None, description="Seed of the choice of sessions and of where each context starts; null: derived from the run's seed."
    )
    split: Literal["train", "val", "test"] = Field(default="val", description="Split the contexts come from.")
    num_sessions: Int = Field(
        default=4, description="Contexts come from this many sessions (one each, at least two contexts); 0 or less: every session."
    )
    context_length_s: PositiveFloat = Field(default=2.0, description="Real signal the model is given, in seconds.")
    total_length_s: PositiveFloat = Field(
        default=6.0, description="Context plus continuation, in seconds; the continuation is what is compared."
    )

    @model_validator(mode="after")
    def _check_lengths(self) -> ExampleSamplerConfig:
        if self.total_length_s <= self.context_length_s:
            raise ValueError(
                f"total_length_s ({self.total_length_s}) must be longer than context_length_s "
                f"({self.context_length_s}): the difference is the continuation that is evaluated"
            )
        return self


class GeneratorConfig(Section):
    """How continuations are generated with the model's ``forecast``."""

    enabled: bool = Field(default=True, description="Generate continuations and compare them with the real ones.")
    seed: Int | None = Field(
        default=None,
        description="Seed of the torch.Generator that draws codes (the same seed gives the same rollouts); null: derived from the run's seed.",
    )
    rollouts_per_context: Int = Field(default=1, ge=1, description="Continuations generated from each context.")
    rollout_batch_size: Int = Field(default=4, ge=1, description="Rollouts generated together in one batch.")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description="How each code is drawn (section below).")


class EvalRunnerConfig(Section):
    """Evaluation of checkpoints while training (and offline with `brain-gen eval`)."""

    enabled: bool = Field(default=False, description="Evaluate last-checkpoints while training; false trains without evaluations.")
    every_n_checkpoints: Int = Field(default=1, ge=1, description="Evaluate every Nth last-checkpoint write; with wait_at_end, the final one always.")
    metrics_split: Literal["val", "test"] = Field(default="val", description="Split of the teacher-forced loss and metrics.")
    max_batches: Int | None = Field(
        default=8, ge=1, description="Teacher-forced batches scored (the first ones of the split, in order); null: the whole split."
    )
    num_examples: Int = Field(default=3, ge=0, description="Contexts drawn in examples.png.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Where evaluations run; auto: the first GPU if there is one, else the CPU."
    )
    timeout_minutes: PositiveFloat = Field(default=30.0, description="An evaluation running longer is stopped and reported.")
    wait_at_end: bool = Field(
        default=True, description="After training, wait (with a progress line) for the final checkpoint's evaluation."
    )
    analyses: list[Literal["spectral", "spatial", "amplitude", "horizon"]] = Field(
        default_factory=lambda: list(EVAL_ANALYSES),
        description="Comparisons of generated with real continuations: spectral, spatial, amplitude, horizon.",
    )
    horizon_window_s: PositiveFloat = Field(
        default=0.5, description="Length of the consecutive windows of the horizon analysis, in seconds."
    )
    example_sampler: ExampleSamplerConfig = Field(
        default_factory=ExampleSamplerConfig, description="Where the real contexts come from (section below)."
    )
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig, description="How continuations are generated (section below).")

    # The reference toolkit's cloud keys: they parse, so its eval blocks load, and a notice says they do nothing here.
    use_modal: Any = Field(default=None, description="Reference toolkit's cloud switch; no effect: evaluations run locally.")
    modal_app: Any = Field(default=None, description="Reference toolkit's cloud app; no effect: evaluations run locally.")
    modal_function: Any = Field(default=None, description="Reference toolkit's cloud function; no effect: evaluations run locally.")
    modal_env: Any = Field(default=None, description="Reference toolkit's cloud environment; no effect: evaluations run locally.")

    @property
    def cloud_keys_set(self) -> list[str]:
        """The reference toolkit's cloud keys that were written (they have no effect here)."""
        # A resolved config.yaml writes them as null: only a value counts.
        return [key for key in EVAL_CLOUD_KEYS if getattr(self, key) is not None]


# --------------------------------------------------------------------------- top level


class ExperimentConfig(Section):
    """A whole training run."""

    save_dir: str = Field(description="Folder that receives logs, checkpoints and the cache.")
    resume_from: str | None = Field(default=None, description="Checkpoint file to continue training (or testing) from.")
    init_from: str | None = Field(
        default=None,
        description="Start a new training from these weights only (a brain-gen or Lightning .ckpt, or a file holding a "
        "model's plain state_dict); the optimizer, schedule and epoch start afresh. Not with resume_from.",
    )
    seed: Int | None = Field(
        default=42,
        description="Seed of the run: weight initialisation, training order, loader workers, MixUp, dropout, token corruption "
        "and the eval runner's sampling all derive from it, so a run repeats exactly (with trainer.deterministic on GPU). "
        "null draws a random seed; the seed in force is written to the run's config.yaml either way.",
    )
    model_name: str = Field(description="Model class: a built-in name (ChannelGPT, SpaceTimeGPT, TextGPT, WaveNet, ConvClassifier, HFCausalLM, CNNUnivariate, CNNMultivariate, CNNUnivariateQuantized, CNNMultivariateQuantized) or an import path.")
    loss_name: str = Field(description="Loss class: a built-in name (CrossEntropy, MSE) or an import path.")
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        alias="model_config",
        description="Constructor arguments of the model: a mapping, or a path to a YAML file holding one.",
    )
    loss: dict[str, Any] = Field(default_factory=dict, description="Constructor arguments of the loss.")
    experiment_name: str = Field(
        default="logs", description="Name of the TensorBoard run folder under save_dir (version_N folders go inside)."
    )
    dataloader_class: str = Field(
        default="DataLoader", description="Loader class: DataLoader, MixupDataLoader, TextDataLoader, or an import path."
    )
    datasplitter: DataSplitterConfig = Field(description="Where the data is and how it is split (section below).")
    dataloader: DataLoaderConfig = Field(default_factory=DataLoaderConfig, description="Data loader options (section below).")
    lightning: LightningConfig = Field(description="Optimizer, schedules and resume overrides (section below).")
    trainer: TrainerConfig = Field(default_factory=TrainerConfig, description="brain-gen's trainer keys and pytorch_lightning.Trainer arguments (section below).")
    eval_runner: EvalRunnerConfig | None = Field(
        default=None, description="Evaluation of checkpoints while training and with `brain-gen eval` (section below)."
    )
    prepare: PrepareConfig | None = Field(
        default=None, description="Options of `brain-gen prepare` (section below), so one file can hold both; training ignores them."
    )

    # `model_config` is a pydantic reserved name, hence the alias above.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)
    # True when `seed: null` had this process draw the seed (brain_gen.config.loading.resolve_seeds).
    _seed_drawn: bool = PrivateAttr(default=False)

    @model_validator(mode="before")
    @classmethod
    def _resolve_resume_token_corruption(cls, data: Any) -> Any:
        """``lightning.resume_token_corruption: true`` becomes the model config's own settings."""
        lightning = data.get("lightning") if isinstance(data, dict) else None
        if not (isinstance(lightning, dict) and lightning.get("resume_token_corruption") is True):
            return data
        model_kwargs = data.get("model_config", data.get("model_kwargs"))
        settings = model_kwargs.get("token_corruption_cfg") if isinstance(model_kwargs, dict) else None
        # A model config without settings built a model without corruption: reusing it means off.
        settings = dict(settings) if isinstance(settings, dict) else {"enabled": False}
        return {**data, "lightning": {**lightning, "resume_token_corruption": settings}}

    @model_validator(mode="after")
    def _check_loader_extras(self) -> ExperimentConfig:
        # Import paths are checked once the class is resolved (it may extend a built-in loader).
        if self.dataloader_class not in ("DataLoader", *LOADER_OPTIONS):
            return self
        loader = self.dataloader_class if self.dataloader_class in LOADER_OPTIONS else None
        problems = self.dataloader.misplaced_keys(loader, self.dataloader_class)
        if problems:
            raise ValueError("\n".join(problems))  # one problem per line: the CLI prints each on its own
        if self.dataloader_class == "TextDataLoader" and self.dataloader.tokenizer_path is None:
            raise ValueError("dataloader.tokenizer_path is required with dataloader_class: TextDataLoader")
        return self

    @model_validator(mode="after")
    def _check_resume_keys(self) -> ExperimentConfig:
        if self.init_from is not None and self.resume_from is not None:
            raise ValueError("init_from starts a new training from weights, resume_from continues one; keep only one of them")
        if self.resume_from is None:
            for key in self.lightning.resume_keys_set():
                raise ValueError(f"lightning.{key} only applies when resuming; set resume_from or remove the key")
            if self.trainer.validate_before_resume:
                raise ValueError("trainer.validate_before_resume only applies when resuming; set resume_from or remove the key")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data with every default filled in; it loads back to an equal config.

        Keys that do not apply to the chosen loader class or split strategy are left
        out, since writing them is an error.
        """
        # Callback objects passed from Python have no plain-data form; their repr stands in.
        data = self.model_dump(by_alias=True, mode="json", fallback=repr)
        if self.dataloader_class in ("DataLoader", *LOADER_OPTIONS):
            dropped = self.dataloader.inapplicable_keys(self.dataloader_class)
        else:
            # A class by import path may extend a built-in loader: keep the extras the user wrote.
            dropped = [key for key in self.dataloader.inapplicable_keys(None) if not self.dataloader.explicitly_set(key)]
        for key in dropped:
            del data["dataloader"][key]
        if self.datasplitter.split_strategy == "dataset":
            del data["datasplitter"]["val_ratio"], data["datasplitter"]["test_ratio"]
        # Written out, the interval both schedules really step at; defaults would read back as choices.
        for key in ("lr_scheduler", "lr_warmup"):
            if data["lightning"][key] is not None:
                data["lightning"][key]["interval"] = self.lightning.schedule_interval
        return data

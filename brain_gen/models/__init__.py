"""Models: plain nn.Modules, one file per family."""

from typing import Any

# Built-in model classes by config name (`model_name`).
MODELS = {
    "ChannelGPT": "brain_gen.models.channel_gpt:ChannelGPT",
    "SpaceTimeGPT": "brain_gen.models.space_time_gpt:SpaceTimeGPT",
    "TextGPT": "brain_gen.models.text_gpt:TextGPT",
    "ConvClassifier": "brain_gen.models.conv_classifier:ConvClassifier",
    "WaveNet": "brain_gen.models.wavenet:WaveNet",
    "CNNUnivariate": "brain_gen.models.cnn:CNNUnivariate",
    "CNNMultivariate": "brain_gen.models.cnn:CNNMultivariate",
    "CNNUnivariateQuantized": "brain_gen.models.cnn:CNNUnivariateQuantized",
    "CNNMultivariateQuantized": "brain_gen.models.cnn:CNNMultivariateQuantized",
    "HFCausalLM": "brain_gen.models.hf_causal_lm:HFCausalLM",
}

# Prefix torch.compile puts on parameter names when a compiled module itself is saved.
COMPILED_PREFIX = "_orig_mod."


def call_model(model, inputs: Any) -> Any:
    """Run a model on a batch's inputs; a tuple of inputs becomes positional arguments."""
    return model(*inputs) if isinstance(inputs, (tuple, list)) else model(inputs)

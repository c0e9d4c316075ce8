"""Models: plain nn.Modules, one file per family."""

# Built-in model classes by config name (`model_name`).
MODELS = {
    "ChannelGPT": "brain_gen.models.channel_gpt:ChannelGPT",
    "TextGPT": "brain_gen.models.text_gpt:TextGPT",
    "ConvClassifier": "brain_gen.models.conv_classifier:ConvClassifier",
    "WaveNet": "brain_gen.models.wavenet:WaveNet",
}

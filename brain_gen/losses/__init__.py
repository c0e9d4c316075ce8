"""Losses and the metrics logged beside them.

A loss is an nn.Module with ``forward(outputs, targets, model=None) -> scalar`` and a
``metrics`` dict of ``name -> callable(outputs, targets)``; each metric is logged
as ``{stage}/{name}``.
"""

# Built-in loss classes by config name (`loss_name`).
LOSSES = {
    "CrossEntropy": "brain_gen.losses.next_step:CrossEntropy",
    "MSE": "brain_gen.losses.next_step:MSE",
}

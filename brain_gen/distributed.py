"""Which process of a distributed run this is, read from the launcher's environment.

Known before anything starts (no process group is needed), so that work done once
per run (the run folder's files, the console lines, the evaluation process, the
split cache) can be left to global rank zero from the first line of a command.
Also the exception of a run that a cluster preempted (SIGTERM, or SLURM's requeue
signal), which the command line turns into its exit status without importing the
training code first.
"""

from __future__ import annotations

import os

# Set by the launchers that start one process per device: torchrun (RANK), SLURM (SLURM_PROCID),
# and Lightning's own launcher for the processes it adds (LOCAL_RANK, with NODE_RANK per node).
RANK_VARIABLES = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK")


def launched_as_rank_zero() -> bool:
    """Whether no launcher's rank variable says this process is not global rank zero."""
    return all(os.environ.get(name, "0").strip() in ("", "0") for name in RANK_VARIABLES)


class TrainingPreempted(Exception):
    """Training stopped on a cluster's notice (SIGTERM, or SLURM's requeue signal), after writing a last-checkpoint."""

    def __init__(self, step: int, signal_name: str = "SIGTERM", requeued: bool = False):
        self.step = step
        self.signal_name = signal_name
        self.requeued = requeued
        handed = " and the job was handed to SLURM's auto-requeue" if requeued else ""
        super().__init__(f"preempted ({signal_name}) at step {step}; a last-checkpoint was written{handed}: continue with resume_from: last")

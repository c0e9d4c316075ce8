"""Cost of the eval runner: the demo run evaluating every checkpoint against the same run without.

What is timed is the command a user types, `brain-gen train CONFIG` on the demo config
(3 epochs of ChannelGPT on the generated dataset), from its start to its exit: imports,
data, training and, with the runner, the wait for the final checkpoint's evaluation.
The evaluation process starts before the command's own imports, so timing only
``ExperimentDL.train()`` would leave out part of what it costs and saves.

Why lock-step: this machine's speed drifts by up to 70% within tens of seconds, and two
whole runs timed one after the other gave any ratio from 0.97 to 1.33. So both commands
run at once and take turns, and only one of them runs at any time:

* each side has a callback (``TakeTurns``, added through ``trainer.callbacks``) that,
  at every training batch's start, tells this referee it is ready and waits for "go";
* a turn runs from "go" to the side's next message: one training step plus whatever
  follows it before the next step (validation, checkpoints, evaluations queued);
  the first turn is the start-up and the last one runs to the command's exit, so it
  holds the final evaluation the runner waits for;
* outside its turns a side's whole process tree (the command, its data-loading
  workers and its evaluation process) is stopped with SIGSTOP, so that the waiting
  side takes no CPU from the running one, and the evaluation process gets only what
  it would get beside its own training.

Turn by turn the two sides meet the same machine, so the drift cancels in the ratio of
their summed turns. Printed per round: start-up, training turns and last turn of each
side, the median of the turn-by-turn ratios, and the ratio of the totals; then the
median over rounds of that ratio. Target: at most 1.10x.

Also timed: one offline evaluation of the demo checkpoint with the default settings,
as `brain-gen eval` runs it (target: under 60 s on CPU).
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import yaml

from benchmarks.common import Result

ROUNDS = 3
REPO = Path(__file__).resolve().parent.parent

OFFLINE = r"""
import json, sys, time
started = time.perf_counter()
from brain_gen.config.loading import load_config
from brain_gen.eval.offline import evaluate_checkpoint
_, summary = evaluate_checkpoint(load_config(sys.argv[1]), "last")
print(json.dumps({"seconds": time.perf_counter() - started, "evaluate_seconds": summary["wall_time_s"]}))
"""

# The command as `brain-gen` runs it, from the repository root so that the config can name
# this module's callback.
TRAIN = "import sys; from brain_gen.cli import main; sys.exit(main())"


class TakeTurns(pl.Callback):
    """Before every training step: report "ready" on ``report_fd`` and wait for a byte on ``go_fd``."""

    def __init__(self, go_fd: int, report_fd: int):
        self.go_fd, self.report_fd = go_fd, report_fd

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        os.write(self.report_fd, b"r")
        if not os.read(self.go_fd, 1):
            raise RuntimeError("the benchmark's referee went away")


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it, from /proc."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                pending.extend(int(child) for child in (task / "children").read_text().split())
            except OSError:
                pass
    return found


def signal_tree(pid: int, signum: int) -> None:
    for member in process_tree(pid):
        try:
            os.kill(member, signum)
        except ProcessLookupError:
            pass


class Side:
    """One `brain-gen train` command, run turn by turn."""

    def __init__(self, name: str, config: dict, folder: Path):
        self.name = name
        self.go_read, self.go_write = os.pipe()
        self.report_read, self.report_write = os.pipe()
        config["trainer"]["callbacks"] = [
            {"class_path": "benchmarks.bench_eval_runner:TakeTurns", "init_args": {"go_fd": self.go_read, "report_fd": self.report_write}}
        ]
        self.config_path = folder / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.process: subprocess.Popen | None = None
        self.turns: list[float] = []
        self.output = folder / f"{name}.log"

    def start_turn(self) -> float:
        """Start the command, or let it take its next step; returns the turn's start time."""
        started = time.perf_counter()
        if self.process is None:
            with open(self.output, "w") as output:
                self.process = subprocess.Popen(
                    [sys.executable, "-c", TRAIN, "train", str(self.config_path)],
                    cwd=REPO,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    pass_fds=(self.go_read, self.report_write),
                    start_new_session=True,
                )
            os.close(self.go_read)
            os.close(self.report_write)
        else:
            signal_tree(self.process.pid, signal.SIGCONT)
            os.write(self.go_write, b"g")
        return started

    def finish_turn(self, started: float) -> bool:
        """Wait for the side to be ready for its next step (then stop its processes) or to exit.

        Returns whether it is still running.
        """
        running = os.read(self.report_read, 1) == b"r"
        if not running:
            if self.process.wait():
                raise RuntimeError(f"{self.name}: brain-gen train exited with {self.process.returncode}; see {self.output}")
        self.turns.append(time.perf_counter() - started)
        if running:
            signal_tree(self.process.pid, signal.SIGSTOP)
        return running

    def close(self) -> None:
        os.close(self.go_write)
        os.close(self.report_read)
        if self.process is not None and self.process.poll() is None:
            signal_tree(self.process.pid, signal.SIGCONT)
            self.process.kill()
            self.process.wait()


def run_round(configs: dict[str, dict], folder: Path, first: str) -> dict[str, list[float]]:
    """Both commands to their exit, in turns; the turn times of each side."""
    order = [first, *(name for name in configs if name != first)]
    sides = {name: Side(name, json.loads(json.dumps(configs[name])), folder) for name in order}
    try:
        running = list(order)
        while running:
            for name in list(running):
                side = sides[name]
                if not side.finish_turn(side.start_turn()):
                    running.remove(name)
    finally:
        for side in sides.values():
            side.close()
    for line in sides["with"].output.read_text().splitlines():
        if "eval_runner:" in line:
            print(f"  | {line.strip()}")
    return {name: side.turns for name, side in sides.items()}


def describe(turns: list[float]) -> str:
    return f"start-up {turns[0]:.1f} s, {len(turns) - 2} steps {sum(turns[1:-1]):.1f} s, last turn {turns[-1]:.1f} s"


def main(rounds: int = ROUNDS) -> list[Result]:
    from brain_gen.demo import demo_config, make_synthetic_dataset

    with tempfile.TemporaryDirectory() as folder_name:
        folder = Path(folder_name)
        make_synthetic_dataset(folder / "data")
        configs = {}
        for side, enabled in (("without", False), ("with", True)):
            config = demo_config()
            config["save_dir"] = str(folder / f"runs_{side}")
            config["datasplitter"]["dataset_root"] = str(folder / "data")
            config["trainer"]["enable_progress_bar"] = True
            config["eval_runner"] = {"enabled": enabled}
            configs[side] = config
        ratios = []
        for round_index in range(rounds):
            print(f"round {round_index + 1}:")
            turns = run_round(configs, folder, first="with" if round_index % 2 else "without")
            with_turns, without_turns = turns["with"], turns["without"]
            if len(with_turns) != len(without_turns):
                raise RuntimeError(f"the two runs took {len(with_turns)} and {len(without_turns)} turns; they should match")
            step_ratios = [a / b for a, b in zip(with_turns[1:-1], without_turns[1:-1])]
            ratios.append(sum(with_turns) / sum(without_turns))
            print(f"  without: {describe(without_turns)}; total {sum(without_turns):.1f} s")
            print(f"  with:    {describe(with_turns)}; total {sum(with_turns):.1f} s")
            print(f"  steps: median turn ratio {statistics.median(step_ratios):.3f}x; whole command {ratios[-1]:.3f}x")
        median = statistics.median(ratios)
        print(f"demo run with eval_runner at every checkpoint vs without: median {median:.3f}x over {rounds} rounds (target <= 1.10x)")
        summaries = sorted((folder / "runs_with").glob("logs/version_*/evals/*/summary.json"))
        print(f"evaluations that finished: {len(summaries)} ({', '.join(path.parent.name for path in summaries)})")
        offline = run_offline(folder / "with.yaml")
        print(
            f"one offline evaluation of the demo checkpoint with the defaults: {offline['seconds']:.1f} s "
            f"({offline['evaluate_seconds']:.1f} s after start-up; target < 60 s)"
        )
    rounds_text = ", ".join(f"{ratio:.3f}" for ratio in ratios)
    return [
        Result("bench_eval_runner", "demo `brain-gen train` with eval_runner over without", f"{median:.3f}x (rounds {rounds_text})", "<= 1.10x", median <= 1.10),
        Result("bench_eval_runner", "one offline evaluation of the demo checkpoint", f"{offline['seconds']:.1f} s", "< 60 s", offline["seconds"] < 60),
    ]


def run_offline(config_path: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", OFFLINE, str(config_path)], capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(result.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="runs of each side (about 2 minutes per round)")
    from benchmarks.common import print_table

    print_table(main(parser.parse_args().rounds))

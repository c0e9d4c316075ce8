"""Cost of the eval runner: the demo run with an evaluation of every checkpoint against the same run without.

Each run is the command a user types, `brain-gen train CONFIG` on the demo config
(3 epochs of ChannelGPT on the generated dataset), timed from its start to its exit:
imports, data, training and, with the runner, the wait for the final checkpoint's
evaluation. The command starts the evaluation process before its own imports, so
that process's start-up overlaps them; timing only ``ExperimentDL.train()`` would
leave that overlap out of the baseline. Runs with and without the runner take
turns, so that the machine's drifts in speed hit both alike; the ratio of each pair
and their median are printed. Target: at most 1.10x.

Also timed: one offline evaluation of the demo checkpoint with the default settings,
as `brain-gen eval` runs it (target: under 60 s on CPU).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROUNDS = 5

OFFLINE = r"""
import json, sys, time
started = time.perf_counter()
from brain_gen.config.loading import load_config
from brain_gen.eval.offline import evaluate_checkpoint
_, summary = evaluate_checkpoint(load_config(sys.argv[1]), "last")
print(json.dumps({"seconds": time.perf_counter() - started, "evaluate_seconds": summary["wall_time_s"]}))
"""


def run(script: str, *arguments: str) -> dict:
    result = subprocess.run([sys.executable, "-c", script, *arguments], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def train_command(config: Path) -> dict:
    """Wall time of `brain-gen train CONFIG`, and the evaluations it reports as done."""
    command = Path(sys.executable).with_name("brain-gen")
    started = time.perf_counter()
    result = subprocess.run([str(command), "train", str(config)], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode:
        raise RuntimeError(f"brain-gen train {config} exited with {result.returncode}:\n{result.stderr[-2000:]}")
    evaluated = [line.split("evaluation of ")[1].split()[0] for line in result.stdout.splitlines() if "eval_runner: evaluation of" in line and " done in " in line]
    return {"seconds": seconds, "evaluated": evaluated}


def main() -> float:
    from brain_gen.demo import demo_config, make_synthetic_dataset

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        make_synthetic_dataset(root / "data")
        configs = {}
        for side, enabled in (("without", False), ("with", True)):
            config = demo_config()
            config["save_dir"] = str(root / f"runs_{side}")
            config["datasplitter"]["dataset_root"] = str(root / "data")
            config["trainer"]["enable_progress_bar"] = True
            config["eval_runner"] = {"enabled": enabled}
            configs[side] = root / f"{side}.yaml"
            configs[side].write_text(yaml.safe_dump(config))
        ratios = []
        for round_index in range(ROUNDS):
            without = train_command(configs["without"])
            with_runner = train_command(configs["with"])
            ratios.append(with_runner["seconds"] / without["seconds"])
            print(
                f"round {round_index + 1}: without {without['seconds']:.1f} s, with {with_runner['seconds']:.1f} s "
                f"(evaluated {', '.join(with_runner['evaluated'])}): {ratios[-1]:.3f}x"
            )
        median = statistics.median(ratios)
        print(f"demo run with eval_runner at every checkpoint vs without: median {median:.3f}x (target <= 1.10x)")
        offline = run(OFFLINE, str(configs["with"]))
        print(
            f"one offline evaluation of the demo checkpoint with the defaults: {offline['seconds']:.1f} s "
            f"({offline['evaluate_seconds']:.1f} s after start-up; target < 60 s)"
        )
    return median


if __name__ == "__main__":
    main()

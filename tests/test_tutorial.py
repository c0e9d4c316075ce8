"""docs/tutorial.md runs as written: every file it shows is saved, every command it shows is run, in order.

The tutorial is read as a reader reads it. A code block right after a line ending in
"Save this as `NAME`:" is written to NAME; any other `bash` block is run with bash and
any other `python` block with Python, in one fresh folder, each of which must succeed.
A `text` block after a line ending in "it prints:" must appear, line by line, in what
the command before it printed; other `text` blocks are pictures of files. Any other
block stops the test, so that none is skipped in silence. The `tensorboard` command is started, asked over HTTP
for the scalars and images the tutorial points at, and stopped. `sbatch` and `srun` are
stand-ins (there is no SLURM here) that run the job at once as SLURM would start one
node of it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

REPOSITORY = Path(__file__).resolve().parents[1]
TUTORIAL = REPOSITORY / "docs" / "tutorial.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
SAVE_AS = re.compile(r"Save this as `([^`]+)`:$")

# sbatch: read the job's shape from its #SBATCH lines, set what SLURM sets for one node,
# and run the script in the foreground. srun: start one copy of the command per task.
SBATCH = r"""#!/bin/bash
set -euo pipefail
script=$1
option() { sed -n "s/^#SBATCH --$1=\([^ ]*\).*/\1/p" "$script"; }
[ "$(option nodes)" = 1 ] || { echo "this stand-in runs one node" >&2; exit 1; }
tasks=$(option ntasks-per-node)
export SLURM_JOB_ID=4242 SLURM_JOB_NAME=$(option job-name) SLURM_JOB_NUM_NODES=1 SLURM_NNODES=1
export SLURM_NTASKS_PER_NODE=$tasks SLURM_NTASKS=$tasks SLURM_NODEID=0 SLURM_NODELIST=localhost
exec bash "$script"
"""
SRUN = r"""#!/bin/bash
pids=()
for ((rank = 0; rank < SLURM_NTASKS; rank++)); do
    SLURM_PROCID=$rank SLURM_LOCALID=$rank "$@" &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
"""


@dataclass
class Block:
    language: str
    body: str
    lead: str  # the last non-empty line before the block


def blocks(markdown: str) -> list[Block]:
    # A fence this pattern misses (indented, ~~~) would hide a block from the test.
    assert markdown.count("```") == 2 * len(FENCE.findall(markdown)) and "~~~" not in markdown, "a code fence the test cannot read"
    found, previous_end = [], 0
    for match in FENCE.finditer(markdown):
        lines = [line.strip() for line in markdown[previous_end : match.start()].splitlines() if line.strip()]
        found.append(Block(match.group(1), match.group(2), lines[-1] if lines else ""))
        previous_end = match.end()
    return found


def reader_environment(bin_dir: Path) -> dict[str, str]:
    """The reader's shell: brain-gen and python from this environment first, no rank or SLURM variables."""
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith("SLURM_") and key not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")}
    environment["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), str(bin_dir), environment.get("PATH", "")])
    environment["MPLBACKEND"] = "Agg"
    return environment


def run(arguments: list[str], work: Path, environment: dict[str, str], stdin: str | None = None) -> str:
    result = subprocess.run(arguments, cwd=work, env=environment, input=stdin, capture_output=True, text=True, timeout=900)
    shown = stdin if stdin is not None else arguments[-1]
    assert result.returncode == 0, f"tutorial step failed ({result.returncode}):\n{shown}\n--- stderr:\n{result.stderr[-3000:]}"
    return result.stdout


def get_json(url: str, seconds: float = 60.0):
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.loads(response.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def check_tensorboard(command: str, work: Path, environment: dict[str, str]) -> dict:
    """Start the tutorial's tensorboard command, read the tags it serves, stop it."""
    server = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=work, env=environment, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        address, printed = None, []
        deadline = time.monotonic() + 120
        while address is None and time.monotonic() < deadline:
            line = server.stdout.readline()
            if not line:
                break
            printed.append(line)
            found = re.search(r"(http://\S+?)/? \(Press CTRL\+C", line)
            address = found.group(1) if found else None
        assert address, "tensorboard did not start:\n" + "".join(printed)
        return {"scalars": get_json(f"{address}/data/plugin/scalars/tags"), "images": get_json(f"{address}/data/plugin/images/tags")}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory) -> dict:
    """Follow the whole tutorial in a fresh folder; returns the folder and what was observed."""
    work = tmp_path_factory.mktemp("tutorial")
    bin_dir = tmp_path_factory.mktemp("slurm_stand_ins")
    for name, script in (("sbatch", SBATCH), ("srun", SRUN)):
        (bin_dir / name).write_text(script)
        (bin_dir / name).chmod(0o755)
    environment = reader_environment(bin_dir)
    observed = {"work": work, "commands": [], "tensorboard": None, "outputs_checked": 0}
    last_output = ""
    for block in blocks(TUTORIAL.read_text()):
        saved_as = SAVE_AS.search(block.lead)
        if saved_as:
            (work / saved_as.group(1)).write_text(block.body)
        elif block.language == "bash" and block.body.startswith("tensorboard "):
            observed["tensorboard"] = check_tensorboard(block.body.strip(), work, environment)
        elif block.language == "bash":
            last_output = run(["bash", "-euo", "pipefail", "-c", block.body], work, environment)
            observed["commands"].append(block.body)
        elif block.language == "python":
            last_output = run([sys.executable, "-"], work, environment, stdin=block.body)
            observed["commands"].append(block.body)
        elif block.language == "text" and block.lead.endswith("it prints:"):
            missing = [line for line in block.body.splitlines() if line.strip() and line not in last_output]
            assert not missing, f"the tutorial shows output that the command did not print: {missing}\nprinted:\n{last_output}"
            observed["outputs_checked"] += 1
        elif block.language != "text":
            raise AssertionError(f"a {block.language or 'plain'} block after {block.lead!r} is neither saved nor run")
    return observed


@pytest.mark.slow
def test_every_tutorial_command_runs_and_leaves_what_the_tutorial_describes(tutorial):
    work = tutorial["work"]
    commands = "\n".join(tutorial["commands"])
    for step in ("brain-gen prepare", "brain-gen validate", "brain-gen baselines", "brain-gen train", "brain-gen eval",
                 "brain-gen generate", "brain-gen test", "resume_lr", "resume_context", "trainer.strategy=ddp", "sbatch"):
        assert step in commands, f"the tutorial no longer runs {step}"
    assert tutorial["outputs_checked"] == 2  # validate's summaries, of both configs
    # 1. Sessions with events, from eight recordings, as the tutorial pictures them.
    sessions = sorted(path.parent.name for path in work.glob("sessions/*/meta.json"))
    assert len(sessions) == 8 and all((work / "sessions" / name / "events.tsv").is_file() for name in sessions)
    first_session = work / "sessions" / "sub-01_ses-01_task-motor"
    assert [np.load(first_session / f"{index}.npy").shape for index in (0, 1)] == [(16, 2000), (16, 2000)]
    assert {"sfreq", "ch_names", "ch_types", "pos_2d", "subject", "source"} <= set(json.loads((first_session / "meta.json").read_text()))
    # 3-4. The first run has checkpoints and the final evaluation's plots; TensorBoard serves
    # the scalars and images the tutorial names.
    first_run = work / "runs" / "gpt" / "logs" / "version_0"
    assert list((first_run / "checkpoints").glob("best-checkpoint-*.ckpt"))
    final = first_run / "evals" / "epoch=2-step=30"
    for name in ("summary.json", "rollouts.npz", "psd.png", "examples.png", "covariance.png", "horizon.png"):
        assert (final / name).is_file(), name
    served = tutorial["tensorboard"]
    scalars = served["scalars"]["gpt/logs/version_0"]
    assert {"train/loss", "val/loss", "lr", "grad_norm", "grad_clip_pct", "perf/data_wait_fraction", "eval/psd_distance_ratio"} <= set(scalars)
    assert {"eval/psd", "eval/examples"} <= set(served["images"]["gpt/logs/version_0"])
    # 5. The generated recording: 0.5 s of context and 5 s generated, with its annotation.
    import mne
    raw = mne.io.read_raw_fif(work / "generated_raw.fif", verbose=False)
    assert raw.info["sfreq"] == 100.0 and len(raw.ch_names) == 16 and raw.n_times == 550
    assert list(raw.annotations.description) == ["generated"] and raw.annotations.onset[0] == pytest.approx(0.5)
    assert (work / "generated.png").is_file() and (work / "generated_psd.png").is_file()
    # 6. The test report of the decoder, well above chance.
    report = json.loads((work / "runs" / "decode" / "logs" / "version_1" / "test_metrics.json").read_text())
    assert report["classes"] == ["left", "right"] and report["accuracy"] > 0.7
    assert (work / "runs" / "decode" / "logs" / "version_1" / "confusion_matrix.png").is_file()
    # 7. The resumed run: a new version folder that continued from epoch 3 with the new settings.
    resumed = work / "runs" / "gpt" / "logs" / "version_1"
    resumed_config = (resumed / "config.yaml").read_text()
    assert "resume_lr: 0.001" in resumed_config and "example_seconds: 2.0" in resumed_config
    last = torch.load(next((resumed / "checkpoints").glob("last-checkpoint-epoch=4-*")), weights_only=True)
    # resume_lr became the schedule's starting value; ChannelGPT's 128 positions could not
    # have trained on 199-step inputs had resume_context not grown them.
    assert last["optimizer_states"][0]["param_groups"][0]["initial_lr"] == pytest.approx(1.0e-3)
    # 8. DDP wrote one more version folder; the SLURM job, one folder of its own.
    # Twice the effective batch: half the steps of the one-process run's 30.
    assert list((work / "runs" / "gpt" / "logs" / "version_2" / "checkpoints").glob("last-checkpoint-epoch=2-step=15.ckpt"))
    assert sorted(path.name for path in (work / "runs" / "gpt_slurm" / "logs").iterdir()) == ["version_0"]
    assert list((work / "runs" / "gpt_slurm" / "logs" / "version_0" / "checkpoints").glob("last-checkpoint-epoch=2-*"))
    assert torch.load(next((work / "runs" / "gpt_slurm" / "logs" / "version_0" / "checkpoints").glob("last-*")),
                      weights_only=True)["epoch"] == 2


@pytest.mark.slow
def test_the_readme_figure_script_takes_the_final_psd_plot_of_a_run(tutorial, tmp_path):
    figure = tmp_path / "figure.png"
    run_dir = tutorial["work"] / "runs" / "gpt" / "logs" / "version_0"
    subprocess.run([sys.executable, str(REPOSITORY / "docs" / "make_readme_figure.py"), "--from-run", str(run_dir),
                    "--out", str(figure)], check=True, timeout=120)
    # The tutorial's run ends at step 30, and `brain-gen eval` wrote its own evaluation of
    # that checkpoint beside the runner's, as epoch=2-step=30-2.
    assert (run_dir / "evals" / "epoch=2-step=30-2" / "psd.png").is_file()
    assert figure.read_bytes() == (run_dir / "evals" / "epoch=2-step=30" / "psd.png").read_bytes()
    # A run whose final checkpoint has no evaluation gives no picture, rather than an older one.
    unevaluated = tmp_path / "run"
    shutil.copytree(run_dir, unevaluated)
    shutil.rmtree(unevaluated / "evals")
    shutil.copytree(run_dir / "evals" / "epoch=2-step=30", unevaluated / "evals" / "epoch=0-step=10")
    result = subprocess.run([sys.executable, str(REPOSITORY / "docs" / "make_readme_figure.py"), "--from-run", str(unevaluated),
                             "--out", str(tmp_path / "other.png")], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "final checkpoint is of step 30" in result.stderr and not (tmp_path / "other.png").exists()


def test_the_tutorial_shows_every_file_before_a_command_uses_it():
    """Quick: the files the commands name are all saved by the tutorial, before they are used."""
    saved: set[str] = set()
    for block in blocks(TUTORIAL.read_text()):
        saved_as = SAVE_AS.search(block.lead)
        if saved_as:
            saved.add(saved_as.group(1))
        elif block.language == "bash":
            for name in re.findall(r"\b([\w.-]+\.(?:yaml|py|sbatch))\b", block.body):
                assert name in saved, f"the tutorial runs {name} before showing it"
    assert {"make_recordings.py", "gpt.yaml", "decode.yaml", "train.sbatch"} <= saved

"""Every config under examples/ validates and trains briefly on small demo data; none can be added without it.

Examples name what must run before them in a ``# Needs: FILE`` comment line (resuming
needs a run to resume); the signal-as-text example needs its tokenizer, as its own
comment says.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from brain_gen.cli import main
from brain_gen.demo import make_evoked_dataset, make_synthetic_dataset

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CONFIGS = sorted(str(path.relative_to(EXAMPLES)) for path in EXAMPLES.rglob("*.yaml"))
QUICK = ["--set", "trainer.max_epochs=1", "--set", "trainer.limit_train_batches=2", "--set", "trainer.limit_val_batches=1"]
# Commands an example's comments tell the reader to run before training it.
BEFORE = {"text_gpt.yaml": [["tokenizer-text", "{config}", "--vocab-size", "600", "--max-windows", "50"]]}
# Lightning's DDP starts the other process by running the same command again: these
# run as the user runs them, not inside the test process.
AS_A_COMMAND = {"ddp_cpu.yaml"}
# Quick settings of the examples that need other ones.
SETTINGS = {
    "channel_gpt_resume.yaml": ["--set", "trainer.max_epochs=2", "--set", "trainer.limit_train_batches=2", "--set", "trainer.limit_val_batches=1"],
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A copy of examples/ next to small demo data, laid out as `make demo` lays it out."""
    root = tmp_path_factory.mktemp("examples")
    make_synthetic_dataset(root / "demo_run" / "data", n_sessions=6, session_seconds=20.0, chunk_seconds=10.0)
    make_evoked_dataset(root / "demo_run" / "evoked_data", n_sessions=5, session_seconds=20.0)
    shutil.copytree(EXAMPLES, root / "examples")
    return root


def needs(config: Path) -> list[str]:
    return re.findall(r"^# Needs: (\S+)", config.read_text(), flags=re.MULTILINE)


def train(workspace: Path, name: str, done: set[str]) -> None:
    config = workspace / "examples" / name
    for needed in needs(config):
        if needed not in done:
            train(workspace, needed, done)
    for command in BEFORE.get(name, []):
        assert main([part.format(config=config) for part in command]) == 0, command
    assert main(["validate", str(config)]) == 0, f"{name} does not validate"
    arguments = ["train", str(config), *SETTINGS.get(name, QUICK)]
    if name in AS_A_COMMAND:
        result = subprocess.run([str(Path(sys.executable).with_name("brain-gen")), *arguments], capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{name} does not train: {result.stderr[-2000:]}"
        print(result.stdout)
    else:
        assert main(arguments) == 0, f"{name} does not train"
    done.add(name)


def test_the_examples_folder_holds_the_documented_kinds():
    assert {"channel_gpt_cosine.yaml", "channel_gpt_resume.yaml", "eval_runner.yaml", "ddp_cpu.yaml", "slurm/config.yaml",
            "mixup_quantize.yaml", "text_gpt.yaml", "conv_classifier.yaml"} <= set(CONFIGS)
    assert (EXAMPLES / "slurm" / "train.sbatch").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGS)
def test_every_example_validates_and_trains_briefly(workspace, name, capsys):
    train(workspace, name, set())
    out = capsys.readouterr().out
    assert "logs and checkpoints:" in out

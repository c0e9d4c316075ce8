"""Regenerate the README's picture: the eval runner's PSD plot of the demo run's final checkpoint.

    python docs/make_readme_figure.py                    # runs `brain-gen demo` in a temporary folder (a few minutes on a CPU)
    python docs/make_readme_figure.py --from-run RUN_DIR # takes it from a run folder that has evals/

`make readme-figure` runs the first form. The picture is copied as the eval runner
wrote it, so the README shows exactly what a user of the demo sees.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent / "images" / "demo_psd.png"


def final_psd_plot(run_dir: Path) -> Path:
    """The psd.png of the eval runner's evaluation of the run's final last-checkpoint.

    Only folders named exactly epoch=E-step=S count: `brain-gen eval` of the same
    checkpoint writes epoch=E-step=S-2 beside them. An older evaluation is refused
    rather than taken, since the picture is meant to show the trained model.
    """
    steps = {}
    for plot in run_dir.glob("evals/*/psd.png"):
        named = re.fullmatch(r"epoch=\d+-step=(\d+)", plot.parent.name)
        if named:
            steps[plot] = int(named.group(1))
    last_steps = [int(re.search(r"step=(\d+)", path.name).group(1)) for path in run_dir.glob("checkpoints/last-checkpoint-*.ckpt")]
    if not steps or not last_steps:
        raise SystemExit(f"{run_dir}: no evals/epoch=E-step=S/psd.png or no last-checkpoint; train with eval_runner.enabled first")
    newest = max(steps, key=steps.get)
    if steps[newest] != max(last_steps):
        raise SystemExit(f"{run_dir}: the newest evaluation is of step {steps[newest]}, the final checkpoint is of step "
                         f"{max(last_steps)}; see {run_dir / 'evals'} for why it was not evaluated")
    return newest


def demo_run_dir(workspace: Path) -> Path:
    """Run the demo in workspace and return its run folder."""
    subprocess.run([sys.executable, "-m", "brain_gen", "demo", "--out", str(workspace)], check=True)
    return max((workspace / "runs" / "logs").glob("version_*"), key=lambda path: int(path.name.split("_")[1]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from-run", type=Path, help="a run folder with evals/ (default: run the demo)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"where the PNG goes (default: {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.from_run is not None:
        source = final_psd_plot(args.from_run)
        shutil.copyfile(source, args.out)
    else:
        with tempfile.TemporaryDirectory() as workspace:
            source = final_psd_plot(demo_run_dir(Path(workspace)))
            shutil.copyfile(source, args.out)
    print(f"{args.out} <- {source}")


if __name__ == "__main__":
    main()

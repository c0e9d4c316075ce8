"""The evaluation process: ``python -m brain_gen.eval.worker --config RUN/config.yaml --result-fd N``.

Started by EvalRunner beside training, at the lowest CPU priority and with few torch
threads. It builds what every evaluation of the run shares once (datasets, contexts,
teacher-forced batches), then reads one JSON job per line on stdin, evaluates it
with its stdout and stderr going to that job's ``eval.log``, and answers one JSON
line on the result pipe: ``{"ok": true}`` or ``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import traceback
from pathlib import Path


@contextlib.contextmanager
def output_to(path: Path):
    """Send this process's stdout and stderr (file descriptors 1 and 2) to ``path`` for a while."""
    sys.stdout.flush(), sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a") as log_file:
        os.dup2(log_file.fileno(), 1), os.dup2(log_file.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])


def one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="brain_gen.eval.worker")
    parser.add_argument("--config", required=True)
    parser.add_argument("--result-fd", type=int, required=True)
    args = parser.parse_args(argv)
    with contextlib.suppress(OSError, AttributeError):
        os.nice(19)  # beside training, training wins the CPU
    import torch

    torch.set_num_threads(1)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logging.getLogger("brain_gen").addHandler(handler)
    logging.getLogger("brain_gen").setLevel(logging.INFO)
    results = os.fdopen(args.result_fd, "w", buffering=1)

    from brain_gen.config.loading import load_config
    from brain_gen.eval.evaluation import Evaluation

    evaluation, setup_error = None, None
    try:
        # The run checked its trainer keys already; skipping that keeps Lightning out of this process.
        evaluation = Evaluation(load_config(args.config, check_trainer=False), strict=False)
        evaluation.warm_up()
        # Touch what the first evaluation would otherwise import and build while training waits.
        import brain_gen.eval.analyses  # noqa: F401
        import brain_gen.eval.plots  # noqa: F401
    except Exception as error:  # reported with every job: the worker must keep answering
        setup_error = error
        traceback.print_exc()
    for line in sys.stdin:
        job = json.loads(line)
        out_dir = Path(job["out"])
        out_dir.mkdir(parents=True, exist_ok=True)
        with output_to(out_dir / "eval.log"):
            try:
                if setup_error is not None:
                    raise setup_error
                torch.set_num_threads(int(job.get("threads", 1)))
                print(f"evaluating {job['source']} into {out_dir}", flush=True)
                summary = evaluation.evaluate(job["checkpoint"], out_dir, job.get("tensorboard_dir"), source=job["source"])
                print(f"done in {summary['wall_time_s']:.1f} s", flush=True)
                answer = {"ok": True, "loss": summary["loss"]}
            except Exception as error:
                traceback.print_exc()
                answer = {"ok": False, "error": one_line(error)}
            finally:
                if job.get("remove_checkpoint"):
                    Path(job["checkpoint"]).unlink(missing_ok=True)
        results.write(json.dumps(answer) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

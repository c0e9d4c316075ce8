"""A stand-in evaluation process for queueing tests: each job takes a fixed time and succeeds.

Run as ``python tests/slow_eval_worker.py SECONDS --result-fd N``; it speaks the worker
protocol of brain_gen.eval.worker (SIGUSR1 cancels the running job) and records each
job it finished in ``<out>/job.json``.
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

# "crash" exits with code 3 on the first job, like a process killed mid-evaluation.
crash = sys.argv[1] == "crash"
seconds = 0.0 if crash else float(sys.argv[1])
result_fd = int(sys.argv[sys.argv.index("--result-fd") + 1])
job = {}


def cancelled() -> bool:
    try:
        return Path(job["cancel_file"]).read_text() == job["name"]
    except (KeyError, OSError):
        return False


def cancel(signum, frame):
    pass  # the loop below reads the cancel file


signal.signal(signal.SIGUSR1, cancel)
with os.fdopen(result_fd, "w", buffering=1) as results:
    sys.stdin.readline()  # the setup line: the run's config
    for line in sys.stdin:
        job = json.loads(line)
        if crash:
            sys.exit(3)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not cancelled():
            time.sleep(0.01)
        if cancelled():
            results.write(json.dumps({"ok": False, "cancelled": True}) + "\n")
            continue
        out = Path(job["out"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "job.json").write_text(json.dumps(job))
        results.write(json.dumps({"ok": Path(job["checkpoint"]).is_file()}) + "\n")

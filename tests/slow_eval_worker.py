"""A stand-in evaluation process for queueing tests: each job takes a fixed time and succeeds.

Run as ``python tests/slow_eval_worker.py SECONDS --config C --result-fd N``; it speaks the
worker protocol of brain_gen.eval.worker and records each job it ran in ``<out>/job.json``.
"""

import json
import os
import sys
import time
from pathlib import Path

seconds = float(sys.argv[1])
result_fd = int(sys.argv[sys.argv.index("--result-fd") + 1])
with os.fdopen(result_fd, "w", buffering=1) as results:
    for line in sys.stdin:
        job = json.loads(line)
        time.sleep(seconds)
        out = Path(job["out"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "job.json").write_text(json.dumps(job))
        results.write(json.dumps({"ok": Path(job["checkpoint"]).is_file()}) + "\n")

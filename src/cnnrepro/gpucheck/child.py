"""``python -m cnnrepro.gpucheck.child SETTINGS DATA FOLDER THREADS``: one training run in a process of its own, as
the workflow's train job runs it, so that gpu-check can interrupt it and run it again."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from cnnrepro.engine.train import RunOutputs, train_run
from cnnrepro.runtime import io
from cnnrepro.runtime.logs import setup_job_logging

# The src folder this cnnrepro is imported from: a child process (a training run, snakemake's jobs) runs the same code.
SOURCE = Path(__file__).resolve().parents[2]


def child_env() -> dict[str, str]:
    """This process's environment with this cnnrepro first on PYTHONPATH."""
    paths = [str(SOURCE), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def outputs(folder: Path) -> RunOutputs:
    return RunOutputs(folder / "weights.pt", folder / "history.csv", folder / "metrics.json", folder / "checkpoint.pt")


def main(argv: list[str] | None = None) -> int:
    settings_file, data, folder, threads = argv if argv is not None else sys.argv[1:]
    # Ctrl-C stops the run, as in a terminal, even when this process was started with SIGINT ignored (a
    # background job of a shell without job control is).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    setup_job_logging(None)  # to stderr, which gpu-check writes to the run's log
    train_run(io.read_json(settings_file), data, outputs(Path(folder)), threads=int(threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Determinism as it really was: the ops torch ran without a deterministic implementation during a run.

Training asks for deterministic algorithms with ``warn_only=True``: an op that has no deterministic
implementation (on CUDA, e.g. some pooling backward passes, or cuBLAS without ``CUBLAS_WORKSPACE_CONFIG``)
still runs and torch only warns. :func:`watch` catches those warnings for the whole run, so the record can say
which ops they were, instead of only that determinism was asked for. Other warnings pass through as usual.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Iterator

log = logging.getLogger(__name__)

# The texts of torch's alerts (c10 Context::alertNotDeterministic, alertCuBLASConfigNotDeterministic).
NO_DETERMINISTIC_IMPLEMENTATION = " does not have a deterministic implementation"
CUBLAS_NOT_DETERMINISTIC = "it uses CuBLAS"
CUBLAS_OP = "cuBLAS (CUBLAS_WORKSPACE_CONFIG not set)"


def nondeterministic_op(message: str) -> str | None:
    """The op a torch warning says ran nondeterministically; None when the warning says something else."""
    if NO_DETERMINISTIC_IMPLEMENTATION in message:
        return message.split(NO_DETERMINISTIC_IMPLEMENTATION, 1)[0].strip() or "an unnamed op"
    if CUBLAS_NOT_DETERMINISTIC in message and "CUBLAS_WORKSPACE_CONFIG" in message:
        return CUBLAS_OP
    return None


@contextlib.contextmanager
def watch(ops: set[str]) -> Iterator[set[str]]:
    """Add to ``ops`` every op torch warns ran without a deterministic implementation inside the block; each is
    logged the first time. torch warns on every call of such an op, so they are shown always (not once per
    place, which would hide them from a second run in the same process) and counted here instead."""
    with warnings.catch_warnings():
        for text in (f".*{NO_DETERMINISTIC_IMPLEMENTATION}", f".*{CUBLAS_NOT_DETERMINISTIC}"):
            warnings.filterwarnings("always", message=text)
        passed_on = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            op = nondeterministic_op(str(message))
            if op is None:
                passed_on(message, category, filename, lineno, file, line)
            elif op not in ops:
                ops.add(op)
                log.warning("%s ran without a deterministic implementation: two runs of these settings on this "
                            "device may differ (the record lists it under nondeterministic_ops)", op)

        warnings.showwarning = show
        yield ops

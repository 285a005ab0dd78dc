"""Every study's runs.csv and models.csv gathered into the workflow's own: pandas only (the gather job, and the
partial report after a failed workflow, load no torch)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

import pandas as pd

from cnnrepro.runtime import io

log = logging.getLogger(__name__)

PathLike = str | Path


def write_csv(frame: pd.DataFrame, path: PathLike) -> Path:
    with io.atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


def gather(parts: Iterable[PathLike], out: PathLike) -> Path:
    """Concatenate per-study CSVs (runs.csv or models.csv) into one, columns in order of first appearance."""
    frames = [pd.read_csv(path, dtype=str, keep_default_na=False) for path in parts]
    frames = [frame for frame in frames if len(frame.columns)]
    frame = pd.concat(frames, ignore_index=True, sort=False).fillna("") if frames else pd.DataFrame()
    return write_csv(frame, out)


def gather_tables(runs: Iterable[PathLike], models: Iterable[PathLike], runs_out: PathLike,
                  models_out: PathLike) -> None:
    """Every study's runs.csv and models.csv gathered into one of each."""
    gather(runs, runs_out)
    gather(models, models_out)
    log.info("wrote %s and %s", runs_out, models_out)

"""What runs before any job: the configuration's own checks (cnnrepro.config), then each stage's check of what it
will read (the paper tables' CSVs, the figures' published curves), then every run's settings, each recipe checked
once. The workflow (workflow/rules/common.smk), ``cnnrepro check`` and the tests of broken configurations call
the same :func:`check`, so a configuration that passes here starts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from cnnrepro import config as cfg
from cnnrepro.report import figure_plan
from cnnrepro.report.figure_plan import Figure
from cnnrepro.tables import specs


@dataclass(frozen=True)
class Checked:
    """A configuration that passed every start-up check, with what the checks worked out."""

    config: dict  # validated, the schema's defaults filled in
    settings: dict[str, dict]  # run id -> everything the run needs (cnnrepro.config.run_settings)
    figures: dict[str, list[Figure]]  # study -> its figures


def check(config: dict, probe_models: bool = True) -> Checked:
    """Validate ``config`` in place (defaults filled) and run every start-up check; a ConfigError naming the field
    otherwise. ``probe_models`` False: every check but the models' build on the meta device, for a job's own
    snakemake process (a SLURM job, a group's member), whose configuration the main process checked."""
    cfg.validate(config)
    specs.check_config(config)
    settings = cfg.settings_by_run(config, probe_models)
    return Checked(config, settings, figure_plan.plan(config, settings))


def load(path: str | Path = "config.yaml", overlays: Iterable[str | Path] = ()) -> Checked:
    """``path`` with each overlay merged on top (as snakemake's --configfile merges them), checked."""
    config = cfg.load_yaml(path)
    for overlay in overlays:
        config = cfg.deep_merge(config, cfg.load_yaml(overlay))
    return check(config)

import copy
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def base_config_raw():
    from cnnrepro import config as cfg

    return cfg.load_yaml(REPO / "config.yaml")


@pytest.fixture
def raw_config(base_config_raw, monkeypatch):
    """An unvalidated copy of config.yaml, with paths resolved against the repository."""
    monkeypatch.chdir(REPO)
    return copy.deepcopy(base_config_raw)

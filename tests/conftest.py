import copy
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(items):
    # Every end-to-end test runs the real snakemake: it belongs to the slow tier too.
    for item in items:
        if item.get_closest_marker("e2e"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def base_config_raw():
    from cnnrepro import config as cfg

    return cfg.load_yaml(REPO / "config.yaml")


@pytest.fixture
def raw_config(base_config_raw, monkeypatch):
    """An unvalidated copy of config.yaml, with paths resolved against the repository."""
    monkeypatch.chdir(REPO)
    return copy.deepcopy(base_config_raw)


def config_defaults() -> dict:
    """A minimal valid config with every default the schema fills (the one place defaults live)."""
    from cnnrepro import config as cfg

    study = {"datasets": ["mnist"], "models": ["cnn"], "recipe": {"lr": 0.1, "batch_size": 1, "epochs": 1}}
    return cfg.validate({"studies": {"unit": study}})


def data_options(**overrides) -> dict:
    """A dataset's data settings as the workflow passes them (schema defaults), with ``overrides``."""
    from cnnrepro import config as cfg

    return {**cfg.data_settings(config_defaults(), "mnist"), **overrides}


def bench_options(**overrides) -> dict:
    """The benchmark block as the workflow passes it (schema defaults), with ``overrides``."""
    return {**config_defaults()["benchmark"], **overrides}

import copy
import os
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


@pytest.fixture
def torch_globals_restored():
    """train_run sets process-wide state (threads, deterministic mode, global RNG, CUDA_VISIBLE_DEVICES for a CPU
    run); tests that train restore it, so the other test files see torch as they expect."""
    import torch

    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    rng = torch.get_rng_state()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    yield
    if visible is None:
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    torch.set_rng_state(rng)


# ---- The local smoke run, once per session: test_e2e checks it, test_slurm compares a SLURM run with it.
@pytest.fixture(scope="session")
def smoke(tmp_path_factory):
    """`snakemake --cores 2` on the smoke preset and the sixth study, in a copy of the workflow:
    (workdir, validated config, results directory)."""
    from tests.test_e2e import local_smoke_run

    return local_smoke_run(tmp_path_factory.mktemp("smoke"))


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    """A small synthetic MNIST as the compact file training reads (256 train, 128 test images)."""
    from cnnrepro.data import compact, sources

    path = tmp_path_factory.mktemp("data") / "mnist.pt"
    compact.write_compact(sources.make_synthetic("mnist", 256, 128), path, {"dataset": "mnist"})
    return path

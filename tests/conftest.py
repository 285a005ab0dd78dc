import copy
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


# The modules that take longest, first: the suite runs on two workers (pytest-xdist, one module per worker at a
# time; pyproject.toml), so each starts on one of them and the short modules fill the gaps. The SLURM run waits
# on its cluster's status checks most of the time; the local smoke run, which it and test_e2e read, runs meanwhile.
LONGEST_FIRST = ("test_slurm.py", "test_e2e.py", "test_faults_workflow.py", "test_report_partial.py",
                 "test_open_world.py", "test_faults_inputs.py", "test_gpu_check.py", "test_figures.py",
                 "test_declared_datasets.py", "test_chaining.py", "test_assumptions.py", "test_gpu_slots.py",
                 "test_resources.py", "test_plan.py", "test_faults_config.py", "test_snakemake_report.py",
                 "test_new_study.py", "test_model_files.py")


def pytest_collection_modifyitems(items):
    # Every end-to-end test runs the real snakemake: it belongs to the slow tier too.
    for item in items:
        if item.get_closest_marker("e2e"):
            item.add_marker(pytest.mark.slow)
    rank = {name: k for k, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


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
    (workdir, validated config, results directory). Once per session, whichever worker asks first: the others
    wait for it and read the same run (a run that failed fails them with its own message)."""
    import json

    from filelock import FileLock

    from tests.test_e2e import local_smoke_run, smoke_config

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return local_smoke_run(tmp_path_factory.mktemp("smoke"))
    shared = tmp_path_factory.getbasetemp().parent  # the session's folder, above every worker's own
    record = shared / "smoke.json"
    with FileLock(str(shared / "smoke.lock")):
        if not record.is_file():
            try:
                workdir, _, _ = local_smoke_run(shared / "smoke")
                record.write_text(json.dumps({"workdir": str(workdir)}))
            except BaseException as error:
                record.write_text(json.dumps({"error": f"{type(error).__name__}: {error}"}))
                raise
    outcome = json.loads(record.read_text())
    if "error" in outcome:
        pytest.fail(f"the shared smoke run failed in another worker: {outcome['error']}")
    return smoke_config(Path(outcome["workdir"]))


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    """A small synthetic MNIST as the compact file training reads (256 train, 128 test images)."""
    from cnnrepro.data import compact, sources

    path = tmp_path_factory.mktemp("data") / "mnist.pt"
    compact.write_compact(sources.make_synthetic("mnist", 256, 128), path, {"dataset": "mnist"})
    return path


@pytest.fixture
def no_downloads(monkeypatch):
    """torch.hub's downloads fail as they do without internet (OSError): no test reaches the network."""
    import torch

    def refuse(*args, **kwargs):
        raise OSError("tests must not download")  # as a machine without internet fails

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)

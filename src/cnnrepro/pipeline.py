"""What each Snakemake rule does, as plain functions: the rule scripts only pass their paths here."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch

from cnnrepro import bench, datasets, io, models
from cnnrepro.logs import setup_job_logging
from cnnrepro.train import RunOutputs, batch_transform, build_run_model, train_run

log = logging.getLogger("cnnrepro.pipeline")


def job(function):
    """Log to the job's own file (the ``log_path`` argument) and record any failure there too."""

    @functools.wraps(function)
    def wrapper(*args, log_path: str | None = None, **kwargs):
        setup_job_logging(log_path)
        try:
            return function(*args, **kwargs)
        except Exception:
            log.exception("%s failed", function.__name__)
            raise

    return wrapper


@job
def download_job(dataset: str, root: str) -> None:
    log.info("downloading or verifying %s in %s", dataset, root)
    datasets.download(dataset, root)
    log.info("%s is in %s", dataset, root)


def model_for_weights_file(file_name: str, weights_dir: str) -> str:
    for name in models.MODEL_NAMES:
        if models.get_spec(name).pretrained_weights and models.weights_file(name, weights_dir).name == file_name:
            return name
    raise ValueError(f"no model's pretrained weights are called {file_name}")


@job
def fetch_weights_job(file_name: str, weights_dir: str) -> None:
    name = model_for_weights_file(file_name, weights_dir)
    log.info("fetching %s (%s) into %s", models.get_spec(name).pretrained_weights, file_name, weights_dir)
    models.fetch_weights(name, weights_dir)


@job
def prepare_job(dataset: str, settings: dict, root: str, out: str, classes_csv: str, plot: str) -> None:
    sidecar = datasets.prepare(dataset, settings["source"], root, out, settings)
    log.info("wrote %s (sha256 %s)", out, sidecar.get("sha256"))
    table = datasets.class_distribution(datasets.read_compact(out))
    with io.atomic_path(classes_csv) as tmp:
        table.to_csv(tmp, index=False)
    with io.atomic_path(plot) as tmp:
        datasets.plot_class_distribution(table, tmp)


@job
def train_job(settings: dict, data: str, weights: str, history: str, metrics: str, checkpoint: str,
              weights_dir: str, threads: int) -> dict:
    outputs = RunOutputs(Path(weights), Path(history), Path(metrics), Path(checkpoint))
    return train_run(settings, data, outputs, weights_dir, threads)


def load_trained_model(settings: dict, weights: str) -> torch.nn.Module:
    model = build_run_model(settings, pretrained=False)  # the trained weights replace everything
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval()


def paper_inputs(settings: dict, data: str, count: int) -> torch.Tensor:
    """The first ``count`` test images, preprocessed as at evaluation: what the authors timed at batch 1."""
    test = datasets.read_compact(data)["splits"]["test"]
    transform = batch_transform(settings, torch.device("cpu"), augment_name="none")
    return transform(test["x"][:count], None, False)


@job
def benchmark_job(settings: dict, weights: str, data: str, kind: str, bench_settings: dict, out: str) -> dict:
    ident = {k: settings[k] for k in ("study", "dataset", "model", "freeze")} | {"weights_of_run": settings["run_id"]}
    if kind == "gpu" and not bench.cuda_available():
        record = bench.not_measured_record("not measured: no CUDA device", "gpu")
        log.info("GPU benchmark of %s not measured: no CUDA device", settings["run_id"])
    else:
        model = load_trained_model(settings, weights)
        inputs = paper_inputs(settings, data, bench_settings["paper_runs"])
        options = {**bench_settings, "num_threads": bench_settings["cpu_threads"] if kind == "cpu" else None}
        log.info("benchmarking %s on %s with %d paper-style examples", settings["run_id"], kind, len(inputs))
        record = bench.run_benchmark(model, tuple(inputs.shape[1:]), kind, options, paper_inputs=inputs)
        log.info("median latency %.3f ms (correct), mean %.3f ms (paper-faithful)",
                 record["latency_correct"]["median_ms"], record["latency_paper"]["mean_ms"])
    record.update(ident)
    io.write_json(out, record)
    return record


@job
def aggregate_job(config: dict, results: str) -> None:
    from cnnrepro.aggregate import aggregate

    aggregate(config, results)


@job
def report_job(config: dict, results: str, html: str, tex: str) -> None:
    from cnnrepro.report import render

    render(config, results, html, tex)

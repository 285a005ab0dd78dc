# Shared set-up: config validation, the run list, output paths and input functions.
import os
import sys
from pathlib import Path

# The package lives in src/; this makes a plain checkout work even before `pip install -e .`.
sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from cnnrepro import config as cfg  # noqa: E402
from cnnrepro import locks, resources  # noqa: E402
from cnnrepro import job_server, slurm  # noqa: E402
from snakemake.logging import logger  # noqa: E402

# A snakemake killed with SIGKILL leaves its lock behind; rerunning the same command must not need --unlock.
if stale := locks.remove_stale_locks():
    logger.warning(
        f"Removed the lock left by snakemake process {stale['pid']} on {stale['host']}, which is no longer "
        "running (killed before it could unlock); continuing."
    )


onstart:
    locks.record_holder()
    # SLURM: a request no node of its partition can satisfy would pend forever, silently; stop before submitting.
    if slurm.uses_slurm(workflow):
        try:
            slurm.check_workflow(workflow)
        except slurm.UnsatisfiableRequest as error:
            raise WorkflowError(str(error)) from None
    # A local run without a GPU that would take days stops here, before any job (cnnrepro.plan).
    if workflow.local_exec and (message := slow_run_message()):
        raise WorkflowError(message)
    # Short local jobs fork from one warm process instead of importing torch each (cnnrepro.job_server); not
    # when jobs run in their own conda environment or container, whose interpreter is not the server's.
    if (
        config["job_server"]
        and workflow.local_exec
        and workflow.is_main_process
        and not workflow.deployment_settings.deployment_method
    ):
        os.environ[job_server.SOCKET_ENV] = job_server.start(
            Path.cwd(), Path(f"{RESULTS}/logs/job_server.log"), os.getpid()
        )


try:
    cfg.validate(
        config, Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
    )
    # Every run's settings, its recipe checked once, before any job starts.
    SETTINGS = cfg.settings_by_run(config)
except cfg.ConfigError as error:
    raise WorkflowError(str(error)) from None

RESULTS = config["results"]
RUNS = cfg.expand_runs(config)
RUNS_BY_ID = {run.id: run for run in RUNS}
RUN = "{study}/{dataset}/{model}/{freeze}/{variant}/seed{seed}"
BENCH = "{study}/{dataset}/{model}/{freeze}"


wildcard_constraints:
    study="[A-Za-z0-9_]+",
    dataset="[a-z0-9]+",
    model="[a-z0-9_]+",
    freeze="[A-Za-z0-9_]+",
    variant="[^/]+",
    seed="[0-9]+",


def datasets_used():
    return sorted({run.dataset for run in RUNS})


BENCH_TARGETS = cfg.benchmarked_runs(config)


def bench_run(wildcards):
    return BENCH_TARGETS[
        (wildcards.study, wildcards.dataset, wildcards.model, wildcards.freeze)
    ]


def bench_settings(wildcards):
    return SETTINGS[bench_run(wildcards).id]


def bench_mem_mb(wildcards):
    return resources.bench_mem_mb(
        bench_settings(wildcards),
        cfg.data_settings(config, wildcards.dataset),
        config["benchmark"],
    )


def train_settings(wildcards):
    run_id = RUN.format(**wildcards)
    if run_id not in SETTINGS:
        raise WorkflowError(
            f"no configured run is called {run_id}; `cnnrepro runs` lists the runs of this configuration"
        )
    return SETTINGS[run_id]


def pretrained_weights(wildcards):
    settings = train_settings(wildcards)
    if not settings["pretrained"]:
        return []
    from cnnrepro import models

    return [str(models.weights_file(settings["model"], config["weights_dir"]))]


# Epoch grid chaining (cnnrepro.chaining): a run that differs from a shorter one only in its epoch count
# continues from that run's final state, an output of the shorter run's job and an input of its own.
from cnnrepro import chaining  # noqa: E402

CHAIN_SOURCES = chaining.chain_sources(SETTINGS) if config["chain_epoch_grids"] else {}
CONTINUED_RUNS = set(CHAIN_SOURCES.values())


def chain_source(wildcards):
    """The id of the run this one continues from, or None."""
    return CHAIN_SOURCES.get(RUN.format(**wildcards))


def chain_state(wildcards):
    source = chain_source(wildcards)
    if source is None:
        return []
    return expand(rules.train.output.final_state, **RUNS_BY_ID[source].wildcards)[0]


def chain_source_settings(wildcards):
    source = chain_source(wildcards)
    return None if source is None else SETTINGS[source]


def keeps_final_state(wildcards):
    return RUN.format(**wildcards) in CONTINUED_RUNS


def gpu_request(wildcards=None):
    # A job pinned to the CPU needs no GPU slot, so CPU-only runs are not serialised by --resources gpu=1.
    return 0 if config["device"] == "cpu" else 1


def dataset_source_inputs(wildcards):
    settings = cfg.data_settings(config, wildcards.dataset)
    if settings["source"] == "torchvision":
        return expand(rules.download_dataset.output[0], dataset=wildcards.dataset)
    if settings["source"] == "npz":
        return list(settings["npz"].values())
    return []


def trained_weights(wildcards):
    """The weights a benchmark measures: those of its (study, dataset, model, freeze)'s first run."""
    return expand(rules.train.output.weights, **bench_run(wildcards).wildcards)[0]


# Figures (rules in figures.smk)
# Which figures each study gets comes from its configuration alone (cnnrepro.figures.plan). Each is a PNG (the
# HTML pages) with a PDF of the same stem beside it (LaTeX); cnnrepro.figures.caption gives its caption.
from cnnrepro import figures as figs  # noqa: E402

try:
    FIGURES = figs.plan(config)
except cfg.ConfigError as error:
    raise WorkflowError(str(error)) from None

FIGURE = f"{RESULTS}/report/figures/{{study}}/{{figure}}"


def study_figures(study):
    """The study's figures as PNG paths, in reading order; each has a PDF beside it with the same stem."""
    return [f"{FIGURE.format(study=study, figure=f.name)}.png" for f in FIGURES[study]]


def all_figures():
    return [png for study in FIGURES for png in study_figures(study)]


def figure_captions(study):
    """PNG path -> caption, for each of the study's figures."""
    return {
        png: figs.caption(config, study, f.name)
        for png, f in zip(study_figures(study), FIGURES[study])
    }


def _figure(wildcards):
    for figure in FIGURES.get(wildcards.study, ()):
        if figure.name == wildcards.figure:
            return figure
    raise WorkflowError(
        f"study {wildcards.study} has no figure {wildcards.figure}; its figures: "
        + ", ".join(f.name for f in FIGURES.get(wildcards.study, ()))
    )


def figure_inputs(wildcards):
    """The files a figure is drawn from, by kind (cnnrepro.figures.make names them)."""
    figure = _figure(wildcards)
    runs = [RUNS_BY_ID[run_id].wildcards for run_id in figure.runs]
    files = {"metrics": [expand(rules.train.output.metrics, **w)[0] for w in runs]}
    if figure.kind in ("curves", "published"):
        files["histories"] = [expand(rules.train.output.history, **w)[0] for w in runs]
    if figure.kind == "published":
        files["published"] = [str(figs.published_curves_path(config, figure.study))]
    if figure.kind == "kernels":
        files["weights"] = [expand(rules.train.output.weights, **w)[0] for w in runs]
    if figure.kind == "pareto":
        keys = [k for k in BENCH_TARGETS if k[0] == figure.study]
        fields = [dict(zip(("study", "dataset", "model", "freeze"), k)) for k in keys]
        files["bench_cpu"] = [
            expand(rules.benchmark_cpu.output[0], **f)[0] for f in fields
        ]
        files["bench_gpu"] = [
            expand(rules.benchmark_gpu.output[0], **f)[0] for f in fields
        ]
    if figure.kind == "classes":
        classes = rules.prepare_dataset.output.classes
        files = {"classes": expand(classes, dataset=figure.dataset)}
    return files


def figure_labels(wildcards):
    return _figure(wildcards).report_labels()


def figure_caption(wildcards):
    return figs.caption(config, wildcards.study, wildcards.figure)


# --- Compute plan (cnnrepro.plan): runtime requests and the slow-run guard ---
import functools  # noqa: E402

from cnnrepro import gpu_slots, plan  # noqa: E402


@functools.cache
def run_plans():
    """Every run's plan as this config trains it, made once, when a runtime is first asked for."""
    savings = plan.configured_savings(config)
    return {p.run_id: p for p in plan.plan_runs(config, savings, SETTINGS)}


def train_runtime(wildcards, threads, attempt):
    """Minutes: the run's estimate on the reference device x the safety factor, more at each retry."""
    run_plan = run_plans()[RUN.format(**wildcards)]
    settings = train_settings(wildcards)
    return attempt * resources.train_runtime_min(run_plan, settings, threads)


def bench_runtime(kind):
    def runtime(wildcards, attempt):
        settings = bench_settings(wildcards)
        return attempt * resources.bench_runtime_min(
            settings, config["benchmark"], kind
        )

    return runtime


def slow_run_message():
    """Why this local run must not start (CPU only and over the plan's limit), or None."""
    pending = [
        RUN.format(**job.wildcards_dict)
        for job in workflow.dag.needrun_jobs()
        if job.rule.name == "train"
    ]
    plans = run_plans()
    gpus = len(gpu_slots.visible_gpus())
    return plan.slow_run_message(
        config, [plans[run] for run in pending], workflow.cores, gpus
    )


# --- Aggregation and report, per study (rules in aggregate.smk and report.smk) ---
# A study's tables and page need only its own runs, so `snakemake <study>` never waits for another study.
STUDIES = list(config["studies"])


def study_runs(study):
    return [run for run in RUNS if run.study == study]


def study_metrics(study):
    return [
        expand(rules.train.output.metrics, **run.wildcards)[0]
        for run in study_runs(study)
    ]


def study_bench(study):
    keys = [
        dict(zip(("study", "dataset", "model", "freeze"), key))
        for key in BENCH_TARGETS
        if key[0] == study
    ]
    return [
        expand(rule.output[0], **key)[0]
        for key in keys
        for rule in (rules.benchmark_cpu, rules.benchmark_gpu)
    ]


def study_paper_tables(study):
    """The study's paper tables as table name (its CSV's file name) -> the paper's CSV."""
    paths = [
        cfg.paper_table_path(config, table)
        for table in config["studies"][study]["tables"]
    ]
    return {path.name: str(path) for path in paths}


def study_tables(study):
    """The study's aggregated paper tables as table name -> tables/<name>."""
    return {name: f"{RESULTS}/tables/{name}" for name in study_paper_tables(study)}


def study_run_table(study, name):
    """The study's own runs.csv or models.csv."""
    return f"{RESULTS}/tables/{study}/{name}"


def run_logs(study):
    """Run id -> its training log, linked from the report (and how a failed run is told from one not run)."""
    return {
        run.id: expand(rules.train.log[0], **run.wildcards)[0]
        for run in study_runs(study)
    }


import shutil  # noqa: E402

REPORT = f"{RESULTS}/report"
# The PDFs need pdflatex; without it the HTML pages and .tex files are still built, and the log says why not the PDFs.
PDFLATEX = shutil.which("pdflatex")
if PDFLATEX is None:
    logger.warning(
        "pdflatex not found: the report's PDFs are not built (Debian: apt-get install texlive-latex-recommended "
        "texlive-latex-extra lmodern); the HTML pages and .tex files are."
    )


def study_figure_files(study):
    """The study's figures, PNG (embedded in the HTML) and PDF (included by the LaTeX), from figures.smk."""
    pngs = study_figures(study)
    return pngs + [png[: -len(".png")] + ".pdf" for png in pngs]


def study_page_inputs(wildcards):
    return {
        "tables": list(study_tables(wildcards.study).values()),
        "runs": study_run_table(wildcards.study, "runs.csv"),
        "figures": study_figure_files(wildcards.study),
    }


def study_page(study, kind):
    """A study's own page: index.html, report.tex or report.pdf."""
    return f"{REPORT}/{study}/{kind}"


def report_targets(studies=None):
    """The pages of ``studies`` (each its HTML, LaTeX and PDF) or, with None, the full report (HTML, LaTeX, PDF)
    and every study's HTML and LaTeX; the PDFs when pdflatex is installed."""
    pdf = ["report.pdf"] if PDFLATEX else []
    if studies is not None:
        return [
            study_page(study, kind)
            for study in studies
            for kind in ["index.html", "report.tex", *pdf]
        ]
    pages = [
        study_page(study, kind)
        for study in STUDIES
        for kind in ("index.html", "report.tex")
    ]
    return [f"{REPORT}/{kind}" for kind in ["index.html", "report.tex", *pdf]] + pages


# Partial results (--keep-going is on in profiles/default): when jobs failed, the other jobs still ran, and this
# renders every study's tables and pages, and the full report, from the records that exist. The PDFs are left out.
def render_partial_report():
    from cnnrepro import report as rep

    def existing(paths):
        return [str(path) for path in paths if Path(path).is_file()]

    studies = {
        study: rep.StudyFiles(
            metrics=existing(study_metrics(study)),
            bench=existing(study_bench(study)),
            paper_tables=study_paper_tables(study),
            tables=study_tables(study),
            runs=study_run_table(study, "runs.csv"),
            models=study_run_table(study, "models.csv"),
            logs=run_logs(study),
            figures={
                png: caption
                for png, caption in figure_captions(study).items()
                if Path(png).is_file()
            },
            html=study_page(study, "index.html"),
            tex=study_page(study, "report.tex"),
        )
        for study in STUDIES
    }
    try:
        if rep.render_partial(
            config,
            studies,
            runs=rules.aggregate.output.runs,
            models=rules.aggregate.output.models,
            html=rules.report_html.output.html,
            tex=rules.report_html.output.tex,
            repo=workflow.basedir,
        ):
            logger.warning(
                f"Partial results: the report of what ran is in {REPORT}/index.html (failed and not-run runs "
                "marked); rerun the same command to complete it."
            )
    # The partial report must never hide the failure that got us here.
    except Exception as error:
        logger.warning(
            f"could not render the partial report: {type(error).__name__}: {error}"
        )

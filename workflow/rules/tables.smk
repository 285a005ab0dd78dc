# Aggregation, one job per study (cnnrepro.tables): its paper tables beside our numbers (mean, std, n and 95 %
# interval over the runs a row selects, and a verdict), its runs and models; then runs.csv and models.csv of every
# study. A study's tables never wait for another study's runs.
from cnnrepro.tables import assumptions  # noqa: E402
from cnnrepro.tables.layout import table_name  # noqa: E402


def study_metrics(study):
    return [
        expand(rules.train.output.metrics, **run.wildcards)[0]
        for run in study_runs(study)
    ]


def study_bench(study):
    return [
        expand(rule.output[0], **key._asdict())[0]
        for key in BENCH_TARGETS
        if key.study == study
        for rule in (rules.benchmark_cpu, rules.benchmark_gpu)
    ]


def study_paper_tables(study):
    """The study's paper tables as table name (its CSV's file name) -> the paper's CSV."""
    return {
        table_name(config, table): str(cfg.paper_table_path(config, table))
        for table in config["studies"][study]["tables"]
    }


def study_tables(study):
    """The study's aggregated paper tables as table name -> tables/<name>."""
    return {name: f"{RESULTS}/tables/{name}" for name in study_paper_tables(study)}


def study_run_table(study, name):
    """The study's own runs.csv or models.csv."""
    return f"{RESULTS}/tables/{study}/{name}"


def study_assumption_tables(study):
    """With a sweep of the study's assumptions: its comparison of each assumption's values with the paper (by
    value, and the headline metric's numbers); else nothing, and the job's outputs are as without assumptions."""
    if not assumptions.compared(config, study):
        return {}
    return {
        "assumptions": study_run_table(study, "assumptions.csv"),
        "assumption_cells": study_run_table(study, "assumptions_headline.csv"),
    }


def run_logs(study):
    """Run id -> its training log, linked from the report (and how a failed run is told from one not run)."""
    return {
        run.id: expand(rules.train.log[0], **run.wildcards)[0]
        for run in study_runs(study)
    }


for study_name in STUDIES:

    rule:
        name:
            f"aggregate_{study_name}"
        input:
            metrics=study_metrics(study_name),
            bench=study_bench(study_name),
            paper_tables=list(study_paper_tables(study_name).values()),
        output:
            tables=[
                report(
                    path,
                    caption="../../report/paper_table.rst",
                    category=study_name,
                    subcategory="tables",
                    labels={"table": name},
                )
                for name, path in study_tables(study_name).items()
            ],
            runs=study_run_table(study_name, "runs.csv"),
            models=study_run_table(study_name, "models.csv"),
            **study_assumption_tables(study_name),
        log:
            f"{RESULTS}/logs/aggregate/{study_name}.log",
        conda:
            "../../envs/cnnrepro.yaml"
        params:
            study=study_name,
            # The same files as input and output, keyed by table name for the package.
            paper_tables=study_paper_tables(study_name),
            tables=study_tables(study_name),
            logs=run_logs(study_name),
        script:
            "../scripts/aggregate.py"


rule aggregate:
    input:
        runs=[study_run_table(study, "runs.csv") for study in STUDIES],
        models=[study_run_table(study, "models.csv") for study in STUDIES],
    output:
        runs=report(
            f"{RESULTS}/tables/runs.csv",
            caption="../../report/runs.rst",
            category="All runs",
            labels={"table": "runs"},
        ),
        models=report(
            f"{RESULTS}/tables/models.csv",
            caption="../../report/models.rst",
            category="All runs",
            labels={"table": "models"},
        ),
    log:
        f"{RESULTS}/logs/aggregate.log",
    conda:
        "../../envs/cnnrepro.yaml"
    script:
        "../scripts/gather_tables.py"

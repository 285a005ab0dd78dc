# Aggregation, one job per study: its paper tables beside our numbers (mean, std, n and 95 % interval over the
# runs a row selects, and a verdict), its runs and models; then runs.csv and models.csv of every study. A study's
# tables never wait for another study's runs.

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

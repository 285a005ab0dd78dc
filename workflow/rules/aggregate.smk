# Aggregation: every paper table beside our numbers, plus flat tables of all runs and models.


rule aggregate:
    input:
        metrics=all_metrics(),
        bench=all_bench(),
        paper_tables=list(PAPER_TABLE_FILES.values()),
    output:
        tables=[
            report(
                f"{RESULTS}/tables/{name}",
                caption="../../report/paper_table.rst",
                category="Paper tables",
                labels={"table": name},
            )
            for name in PAPER_TABLE_FILES
        ],
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
    params:
        # The same files as input and output, keyed by table name for the package.
        paper_tables=lambda wildcards, input: by_paper_table(input.paper_tables),
        tables=lambda wildcards, output: by_paper_table(output.tables),
    script:
        "../scripts/aggregate.py"

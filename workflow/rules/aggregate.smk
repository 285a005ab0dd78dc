# Aggregation: every paper table beside our numbers, plus flat tables of all runs and models.


rule aggregate:
    input:
        metrics=all_metrics(),
        bench=all_bench(),
    output:
        tables=[
            report(
                f"{RESULTS}/tables/{name}",
                caption="../../report/paper_table.rst",
                category="Paper tables",
                labels={"table": name},
            )
            for name in PAPER_TABLES
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
        # results/tables/runs.csv -> results
        results=lambda wildcards, output: str(Path(output.runs).parent.parent),
    script:
        "../scripts/aggregate.py"

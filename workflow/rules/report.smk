# Report: one self-contained HTML page and a LaTeX file of booktabs tables.


rule report_html:
    input:
        tables=rules.aggregate.output.tables,
        runs=rules.aggregate.output.runs,
        models=rules.aggregate.output.models,
        classes=class_plots(),
    output:
        html=report(
            f"{RESULTS}/report/index.html",
            caption="../../report/index.rst",
            category="Report",
            labels={"file": "index.html"},
        ),
        tex=f"{RESULTS}/report/tables.tex",
    log:
        f"{RESULTS}/logs/report.log",
    conda:
        "../../envs/cnnrepro.yaml"
    params:
        # The same files as input, keyed by table name and by dataset for the package.
        tables=lambda wildcards, input: by_paper_table(input.tables),
        classes=lambda wildcards, input: by_dataset(input.classes),
    script:
        "../scripts/report.py"

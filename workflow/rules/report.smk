# Report: one self-contained HTML page and a LaTeX file of booktabs tables.


rule report_html:
    input:
        tables=rules.aggregate.output.tables,
        runs=rules.aggregate.output.runs,
        models=rules.aggregate.output.models,
        classes=expand(
            f"{RESULTS}/data/{{dataset}}_classes.png", dataset=datasets_used()
        ),
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
        results=lambda wildcards, input: str(Path(input.runs).parent.parent),
    script:
        "../scripts/report.py"

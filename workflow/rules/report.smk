# Report: one page per study (report/<study>/index.html, report.tex and report.pdf) and the full report gathering
# every study (report/index.html, report.tex, report.pdf). Each HTML page is self-contained (figures embedded);
# each .tex is a standalone document that \includegraphics the figures' PDFs. A target rule per study name
# (`snakemake <study>`) builds only that study's jobs and page. After a workflow that ended with failed jobs,
# onerror renders the tables and pages from what exists, failed and not-run runs marked (partial results).
rule report_study:
    input:
        unpack(study_page_inputs),
    output:
        html=study_page("{study}", "index.html"),
        tex=study_page("{study}", "report.tex"),
    log:
        f"{RESULTS}/logs/report/{{study}}.log",
    wildcard_constraints:
        study="|".join(STUDIES),
    conda:
        "../../envs/cnnrepro.yaml"
    params:
        studies=lambda wildcards: [wildcards.study],
        tables=lambda wildcards: study_tables(wildcards.study),
        figures=lambda wildcards: {wildcards.study: figure_captions(wildcards.study)},
        repo=workflow.basedir,
    script:
        "../scripts/report.py"


rule report_html:
    input:
        tables=[path for study in STUDIES for path in study_tables(study).values()],
        runs=rules.aggregate.output.runs,
        figures=[path for study in STUDIES for path in study_figure_files(study)],
    output:
        html=report(
            f"{REPORT}/index.html",
            caption="../../report/index.rst",
            category="Report",
            labels={"file": "index.html"},
        ),
        tex=f"{REPORT}/report.tex",
    log:
        f"{RESULTS}/logs/report.log",
    conda:
        "../../envs/cnnrepro.yaml"
    params:
        studies=STUDIES,
        tables={
            name: path
            for study in STUDIES
            for name, path in study_tables(study).items()
        },
        figures={study: figure_captions(study) for study in STUDIES},
        repo=workflow.basedir,
    script:
        "../scripts/report.py"


rule report_pdf:
    input:
        tex=rules.report_html.output.tex,
        figures=[path for study in STUDIES for path in study_figure_files(study)],
    output:
        f"{REPORT}/report.pdf",
    log:
        f"{RESULTS}/logs/report_pdf.log",
    conda:
        "../../envs/cnnrepro.yaml"
    script:
        "../scripts/report_pdf.py"


use rule report_pdf as report_pdf_study with:
    input:
        tex=study_page("{study}", "report.tex"),
        figures=lambda wildcards: study_figure_files(wildcards.study),
    output:
        study_page("{study}", "report.pdf"),
    log:
        f"{RESULTS}/logs/report_pdf/{{study}}.log",
    wildcard_constraints:
        study="|".join(STUDIES),


# One target rule per study: `snakemake --cores 8 --resources gpu=1 seed002_squeezenet_dsc` runs that study's jobs
# only and builds its page. A study named like a rule of the workflow has no such target (the file targets work).
RULE_NAMES = {rule.name for rule in workflow.rules} | {"all"}

for study_name in STUDIES:
    if study_name not in RULE_NAMES:

        rule:
            name:
                study_name
            input:
                report_targets([study_name]),


onsuccess:
    job_server.stop(os.environ.pop(job_server.SOCKET_ENV, None))


# Partial results: render_partial_report (common.smk) renders what exists when jobs failed.
onerror:
    render_partial_report()
    try:
        job_server.stop(os.environ.pop(job_server.SOCKET_ENV, None))
    except (OSError, ValueError) as error:
        logger.warning(f"Could not stop the job server: {error}")

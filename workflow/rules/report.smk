# The report (cnnrepro.report): one job per figure of each study, then one page per study
# (report/<study>/index.html, report.tex and report.pdf) and the full report gathering every study
# (report/index.html, report.tex, report.pdf). Each HTML page is self-contained (figures embedded); each .tex is a
# standalone document that \includegraphics the figures' PDFs. A target rule per study name (`snakemake <study>`)
# builds only that study's jobs and page.
import dataclasses  # noqa: E402
import shutil  # noqa: E402

from cnnrepro.report import figure_plan  # noqa: E402

# Which figures each study gets comes from its configuration alone (FIGURES, from cnnrepro.report.figure_plan).
# Each is a PNG (the HTML pages) with a PDF of the same stem beside it (LaTeX).
FIGURE = f"{RESULTS}/report/figures/{{study}}/{{figure}}"
REPORT = f"{RESULTS}/report"
# The PDFs need pdflatex; without it the HTML pages and .tex files are still built, and the log says why not the PDFs.
PDFLATEX = shutil.which("pdflatex")
if PDFLATEX is None:
    logger.warning(
        "pdflatex not found: the report's PDFs are not built (Debian: apt-get install texlive-latex-recommended "
        "texlive-latex-extra lmodern); the HTML pages and .tex files are."
    )


def study_figures(study):
    """The study's figures as PNG paths, in reading order; each has a PDF beside it with the same stem."""
    return [f"{FIGURE.format(study=study, figure=f.name)}.png" for f in FIGURES[study]]


def all_figures():
    return [png for study in FIGURES for png in study_figures(study)]


def figure_captions(study):
    """PNG path -> caption, for each of the study's figures."""
    return {
        png: figure_plan.caption(config, figure)
        for png, figure in zip(study_figures(study), FIGURES[study])
    }


def the_figure(wildcards):
    try:
        return figure_plan.find(FIGURES, wildcards.study, wildcards.figure)
    except KeyError as error:
        raise WorkflowError(error.args[0]) from None


def figure_inputs(wildcards):
    """The files a figure is drawn from, by kind (cnnrepro.report.figures.make names them)."""
    figure = the_figure(wildcards)
    runs = [RUNS_BY_ID[run].wildcards for run in figure.runs]
    if figure.kind == "classes":
        return {"classes": expand(rules.prepare_dataset.output.classes, dataset=figure.dataset)}
    if figure.kind == "assumptions":
        return {"cells": [study_assumption_tables(figure.study)["assumption_cells"]]}
    files = {"metrics": [expand(rules.train.output.metrics, **w)[0] for w in runs]}
    if figure.kind in ("curves", "published"):
        files["histories"] = [expand(rules.train.output.history, **w)[0] for w in runs]
    if figure.kind == "published":
        files["published"] = [str(figure_plan.published_curves_path(config, figure.study))]
    if figure.kind == "kernels":
        files["weights"] = [expand(rules.train.output.weights, **w)[0] for w in runs]
    if figure.kind == "pareto":
        keys = [key._asdict() for key in BENCH_TARGETS if key.study == figure.study]
        files["bench_cpu"] = [expand(rules.benchmark_cpu.output[0], **k)[0] for k in keys]
        files["bench_gpu"] = [expand(rules.benchmark_gpu.output[0], **k)[0] for k in keys]
    return files


rule figure:
    input:
        unpack(figure_inputs),
    output:
        png=report(
            f"{FIGURE}.png",
            caption="../../report/figure.rst",
            category="{study}",
            subcategory="figures",
            labels=lambda wildcards: the_figure(wildcards).report_labels(),
        ),
        pdf=f"{FIGURE}.pdf",
    log:
        f"{RESULTS}/logs/figures/{{study}}/{{figure}}.log",
    wildcard_constraints:
        figure="[A-Za-z0-9_-]+",
    conda:
        "../../envs/cnnrepro.yaml"
    params:
        # Plain data: the job's launcher unpickles its params before it hands the job to the job server, and a
        # cnnrepro object would make it import the package (and torch) first.
        figure=lambda wildcards: dataclasses.asdict(the_figure(wildcards)),
        caption=lambda wildcards: figure_plan.caption(config, the_figure(wildcards)),
    script:
        "../scripts/figure.py"


def study_figure_files(study):
    """The study's figures, PNG (embedded in the HTML) and PDF (included by the LaTeX)."""
    pngs = study_figures(study)
    return pngs + [png[: -len(".png")] + ".pdf" for png in pngs]


def study_page_inputs(wildcards):
    return {
        "tables": list(study_tables(wildcards.study).values()),
        "runs": study_run_table(wildcards.study, "runs.csv"),
        "figures": study_figure_files(wildcards.study),
        "assumptions": list(study_comparisons([wildcards.study]).values()),
    }


def study_comparisons(studies):
    """study -> its comparison of each assumption's values with the paper, for the studies a sweep compares."""
    return {
        study: tables["assumptions"]
        for study in studies
        if (tables := study_assumption_tables(study))
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
        assumptions=lambda wildcards: study_comparisons([wildcards.study]),
        repo=workflow.basedir,
    script:
        "../scripts/report.py"


rule report_html:
    input:
        tables=[path for study in STUDIES for path in study_tables(study).values()],
        runs=rules.aggregate.output.runs,
        figures=[path for study in STUDIES for path in study_figure_files(study)],
        assumptions=list(study_comparisons(STUDIES).values()),
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
        assumptions=study_comparisons(STUDIES),
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

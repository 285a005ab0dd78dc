# cnnrepro: reproduce published CNN comparisons.
#   snakemake --cores 8 --resources gpu=1                      full reproduction (config.yaml)
#   snakemake --cores 2 --configfile presets/smoke.yaml        synthetic data, minutes, offline
#   snakemake --workflow-profile profiles/slurm                on a SLURM cluster
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


# One rule file per stage, in the order the work flows (cnnrepro's folders of the same names), then the workflow's
# own life around the jobs.
include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/engine.smk"
include: "workflow/rules/bench.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/lifecycle.smk"


rule all:
    default_target: True
    input:
        # the full report and every study's own page (HTML, LaTeX, and PDF when pdflatex is installed)
        report_targets(),
        # every study's figures (cnnrepro.report.figure_plan)
        all_figures(),

# Figures: one job per figure of each study (cnnrepro.figures.plan says which, from the configuration), a PNG for
# the HTML pages and a PDF for LaTeX, each in Snakemake's report under its study's category.


rule figure:
    input:
        unpack(figure_inputs),
    output:
        png=report(
            f"{FIGURE}.png",
            caption="../../report/figure.rst",
            category="{study}",
            subcategory="figures",
            labels=figure_labels,
        ),
        pdf=f"{FIGURE}.pdf",
    log:
        f"{RESULTS}/logs/figures/{{study}}/{{figure}}.log",
    wildcard_constraints:
        figure="[A-Za-z0-9_-]+",
    conda:
        "../../envs/cnnrepro.yaml"
    params:
        caption=figure_caption,
    script:
        "../scripts/figure.py"

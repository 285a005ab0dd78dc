"""Convert one dataset once into the compact uint8 tensor file that training reads."""
from cnnrepro import pipeline

sm = snakemake  # noqa: F821
pipeline.prepare_job(sm.wildcards.dataset, sm.params.settings, sm.params.root, sm.output.data,
                     sm.output.classes, sm.output.plot, log_path=sm.log[0])

"""Convert one dataset once into the compact uint8 tensor file that training reads."""
from cnnrepro.datasets import prepare_files
from cnnrepro.logs import job_log

sm = snakemake  # noqa: F821
with job_log(sm.log[0]):
    prepare_files(sm.wildcards.dataset, sm.params.settings, sm.params.root, sm.output.data, sm.output.classes,
                  sm.output.plot)

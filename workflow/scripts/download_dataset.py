"""Download one dataset through torchvision (or verify the copy already in data_root)."""
from cnnrepro.datasets import download
from cnnrepro.logs import job_log

sm = snakemake  # noqa: F821
with job_log(sm.log[0]):
    download(sm.wildcards.dataset, sm.params.root)

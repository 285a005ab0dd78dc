"""Download one dataset through torchvision (or verify the copy already in data_root)."""
from cnnrepro.data.sources import download
from cnnrepro.runtime.logs import job_log

sm = snakemake  # noqa: F821
with job_log(sm.log[0]):
    download(sm.wildcards.dataset, sm.params.root)

"""Download a torchvision dataset the config declares (or verify the copy already in data_root)."""
from cnnrepro.data.sources import download_declared
from cnnrepro.runtime.logs import job_log

sm = snakemake  # noqa: F821
with job_log(sm.log[0]):
    download_declared(sm.params.declaration, sm.params.root)

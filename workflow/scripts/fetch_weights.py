"""Fetch one torchvision ImageNet weight file into weights_dir (hash-checked)."""
from cnnrepro.models import fetch_weights_file
from cnnrepro.runtime.logs import job_log

sm = snakemake  # noqa: F821
with job_log(sm.log[0]):
    fetch_weights_file(sm.wildcards.weights_file, sm.params.weights_dir)

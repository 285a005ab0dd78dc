"""Fetch one torchvision ImageNet weight file into weights_dir (hash-checked)."""
from cnnrepro import pipeline

pipeline.fetch_weights_job(snakemake.wildcards.weights_file, snakemake.params.weights_dir,  # noqa: F821
                           log_path=snakemake.log[0])  # noqa: F821

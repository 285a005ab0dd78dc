"""Download one dataset through torchvision (or verify the copy already in data_root)."""
from cnnrepro import pipeline

pipeline.download_job(snakemake.wildcards.dataset, snakemake.params.root, log_path=snakemake.log[0])  # noqa: F821

"""What serves the workflow and its jobs, beneath every stage: atomic writes and job logs, the device a job runs on,
one GPU per job, the job server, Snakemake's locks and the SLURM pre-check."""

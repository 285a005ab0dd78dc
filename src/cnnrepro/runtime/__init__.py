"""Runtime: takes the workflow's jobs and gives them what runs them safely, beneath every stage: atomic writes and
job logs, the device, one GPU per job, the job server, Snakemake's locks and the SLURM pre-check."""

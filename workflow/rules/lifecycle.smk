# The workflow's own life, around the jobs (cnnrepro.runtime): Snakemake's lock left by a killed run, the checks
# and the job server at the start, the job server's stop and the partial report at the end.
from cnnrepro.plan import guard  # noqa: E402
from cnnrepro.report import pages  # noqa: E402
from cnnrepro.runtime import gpu_slots, job_server, locks, slurm  # noqa: E402

# A snakemake killed with SIGKILL leaves its lock behind; rerunning the same command must not need --unlock.
if stale := locks.remove_stale_locks():
    logger.warning(
        f"Removed the lock left by snakemake process {stale['pid']} on {stale['host']}, which is no longer "
        "running (killed before it could unlock); continuing."
    )


def slow_run_message():
    """Why this local run must not start (CPU only and over the plan's limit), or None (cnnrepro.plan.guard)."""
    pending = [
        run_id(job.wildcards_dict)
        for job in workflow.dag.needrun_jobs()
        if job.rule.name == "train"
    ]
    plans = run_plans()
    gpus = len(gpu_slots.visible_gpus())
    return guard.slow_run_message(
        config, [plans[run] for run in pending], workflow.cores, gpus
    )


def start_job_server():
    # Short local jobs fork from one warm process instead of importing torch each (cnnrepro.runtime.job_server);
    # not when jobs run in their own conda environment or container, whose interpreter is not the server's.
    if (
        config["job_server"]
        and workflow.local_exec
        and workflow.is_main_process
        and not workflow.deployment_settings.deployment_method
    ):
        os.environ[job_server.SOCKET_ENV] = job_server.start(
            Path.cwd(), Path(f"{RESULTS}/logs/job_server.log"), os.getpid()
        )


def stop_job_server():
    job_server.stop(os.environ.pop(job_server.SOCKET_ENV, None))


# Partial results (--keep-going is on in profiles/default): when jobs failed, the other jobs still ran, and this
# renders every study's tables and pages, and the full report, from the records that exist. The PDFs are left out.
def render_partial_report():
    def existing(paths):
        return [str(path) for path in paths if Path(path).is_file()]

    studies = {
        study: pages.StudyFiles(
            metrics=existing(study_metrics(study)),
            bench=existing(study_bench(study)),
            paper_tables=study_paper_tables(study),
            tables=study_tables(study),
            runs=study_run_table(study, "runs.csv"),
            models=study_run_table(study, "models.csv"),
            logs=run_logs(study),
            figures={
                png: caption
                for png, caption in figure_captions(study).items()
                if Path(png).is_file()
            },
            html=study_page(study, "index.html"),
            tex=study_page(study, "report.tex"),
            **study_assumption_tables(study),
        )
        for study in STUDIES
    }
    if pages.render_partial(
        config,
        studies,
        runs=rules.aggregate.output.runs,
        models=rules.aggregate.output.models,
        html=rules.report_html.output.html,
        tex=rules.report_html.output.tex,
        repo=workflow.basedir,
    ):
        logger.warning(
            f"Partial results: the report of what ran is in {REPORT}/index.html (failed and not-run runs "
            "marked); rerun the same command to complete it."
        )


onstart:
    locks.record_holder()
    # SLURM: a request no node of its partition can satisfy would pend forever, silently; stop before submitting.
    if slurm.uses_slurm(workflow):
        try:
            slurm.check_workflow(workflow)
        except slurm.UnsatisfiableRequest as error:
            raise WorkflowError(str(error)) from None
    # A local run without a GPU that would take days stops here, before any job (cnnrepro.plan.guard).
    if workflow.local_exec and (message := slow_run_message()):
        raise WorkflowError(message)
    start_job_server()


onsuccess:
    stop_job_server()


onerror:
    # The partial report must never hide the failure that got us here.
    try:
        render_partial_report()
    except Exception as error:
        logger.warning(
            f"could not render the partial report: {type(error).__name__}: {error}"
        )
    try:
        stop_job_server()
    except (OSError, ValueError) as error:
        logger.warning(f"Could not stop the job server: {error}")

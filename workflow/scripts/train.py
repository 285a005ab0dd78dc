"""Train one run."""
from cnnrepro.runtime.job_server import delegate

delegate()  # with job_server: true, the run's warm process runs this job (cnnrepro.runtime.job_server)

from cnnrepro.engine.train import ChainStart, RunOutputs, train_run  # noqa: E402
from cnnrepro.runtime import gpu_slots  # noqa: E402
from cnnrepro.runtime.logs import job_log  # noqa: E402

sm = snakemake  # noqa: F821
with job_log(sm.log[0]):
    # Before torch initialises CUDA: a GPU alone, or, for a run that holds no whole GPU (gpu=0, engine.smk), one of
    # the GPUs up to gpu_share runs share.
    share = 1 if sm.resources.get("gpu", 0) else sm.config["gpu_share"]
    gpu_slots.acquire(sm.params.settings["device"], share=share)
    chain = ChainStart(sm.input.chain_state, sm.params.chain_from) if sm.params.chain_from else None
    train_run(sm.params.settings, sm.input.data,
              RunOutputs(sm.output.weights, sm.output.history, sm.output.metrics, sm.params.checkpoint,
                         sm.output.final_state),
              sm.params.weights_dir, sm.threads, chain=chain, keep_final_state=sm.params.keep_final_state)

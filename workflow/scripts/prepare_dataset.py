"""Convert one dataset once into the compact uint8 tensor file that training reads."""
from cnnrepro.runtime.job_server import delegate

delegate()  # with job_server: true, the run's warm process runs this job (cnnrepro.runtime.job_server)

from cnnrepro.data.prepare import prepare_files  # noqa: E402
from cnnrepro.runtime.logs import job_log  # noqa: E402

sm = snakemake  # noqa: F821
with job_log(sm.log[0]):
    prepare_files(sm.wildcards.dataset, sm.params.settings, sm.params.root, sm.output.data, sm.output.classes,
                  sm.output.plot)

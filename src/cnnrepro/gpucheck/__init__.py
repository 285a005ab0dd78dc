"""gpu-check: takes the configuration and a device and proves, in minutes, what a first GPU run must (the smoke
preset, resume, determinism, the benchmarks) and times what the plan assumes; gives gpu-check.json, which
`cnnrepro plan --calibration` reads, and a one-page summary."""

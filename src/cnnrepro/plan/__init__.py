"""Plan: takes a configuration's runs and gives their cost before anything runs (FLOPs, time on a named device,
device and host memory) and what each job asks its scheduler for."""

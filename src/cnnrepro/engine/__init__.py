"""Engine: takes a run's settings and its compact dataset and gives its weights, per-epoch history and metrics:
the recipe, schedules, checkpoints, frozen-prefix caching and epoch-grid chaining of one training run."""

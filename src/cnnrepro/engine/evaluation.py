"""When the engine evaluates and with what batch size: one rule, read by the training run and by the compute plan.
Pure Python (no torch)."""

from __future__ import annotations

from cnnrepro.engine.schedules import make_schedule

# An evaluation pass keeps no activations for a backward pass, so it takes batches at least this large.
MIN_EVAL_BATCH = 256


def eval_batch_size(recipe: dict) -> int:
    """``recipe.eval_batch_size``, or when it is null the training batch size, at least MIN_EVAL_BATCH."""
    return recipe["eval_batch_size"] or max(recipe["batch_size"], MIN_EVAL_BATCH)


def every_epoch_reasons(recipe: dict) -> list[str]:
    """Why a run must evaluate every epoch whatever ``recipe.eval_every`` says: its schedule monitors an evaluation
    metric, or it selects the best epoch."""
    schedule = make_schedule(recipe)
    reasons = [f"schedule {recipe['schedule']} monitors {schedule.monitor}"] if schedule.reads_eval_metrics else []
    if recipe["select"] == "best":
        reasons.append("select: best compares every epoch")
    return reasons


def eval_every(recipe: dict, requested: int | None = None) -> int:
    """Every how many epochs a run evaluates (and after its last): ``requested`` (default ``recipe.eval_every``),
    or 1 when :func:`every_epoch_reasons` finds a reason."""
    every = recipe["eval_every"] if requested is None else requested
    return 1 if every == 1 or every_epoch_reasons(recipe) else every

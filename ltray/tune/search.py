"""A sweep's space, search algorithm and scheduler, as Ray Tune objects.

The space is flat: Tune's config for a trial is ``{"loss.margin": 0.31, ...}``, the job keys
themselves, so a trial's values read the same in Tune, MLflow and the promoted job file.
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from ltray.tune.sweep_config import Domain, Sweep

# the per-epoch count ASHA reads: the driver adds it to each epoch's report. A Tune iteration
# count would restart at 1 when a trial resumes from its Train checkpoint after a restore.
EPOCHS_DONE = "epochs_done"


def tune_domain(domain: Domain) -> Any:
    from ray import tune

    low_high = domain.values
    if domain.kind == "uniform":
        return tune.uniform(*low_high)
    if domain.kind == "loguniform":
        return tune.loguniform(*low_high)
    if domain.kind == "integer":
        return tune.randint(low_high[0], low_high[1] + 1)  # Tune's upper bound is exclusive
    if domain.kind == "choice":
        return tune.choice(list(domain.values))
    return tune.grid_search(list(domain.values))


def param_space(sweep: Sweep) -> dict[str, Any]:
    return {key: tune_domain(domain) for key, domain in sweep.config.space.items()}


def num_samples(sweep: Sweep) -> int:
    """Tune's ``num_samples``: for a grid, how often the whole grid runs."""
    trials = sweep.config.search.trials
    return trials // sweep.grid_points if sweep.config.search.algorithm == "grid" else trials


def search_algorithm(sweep: Sweep, concurrency: int) -> Any:
    """Random and grid: Tune's variant generator (seeded); optuna: TPE, multivariate, seeded.
    At most ``concurrency`` trials run at once (Tune wraps a searcher given
    ``max_concurrent_trials`` in its limiter; the variant generator takes it itself)."""
    search = sweep.config.search
    metric = sweep.config.metric
    if search.algorithm == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        from ltray import logs

        if logs.log_folder() is not None:  # its study and trial lines: chatter, to the log
            logs.adopt("optuna")

        sampler = optuna.samplers.TPESampler(seed=search.seed, multivariate=True)
        return OptunaSearch(metric=metric.name, mode=metric.mode, sampler=sampler)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=search.seed, max_concurrent=concurrency)


def scheduler(sweep: Sweep) -> Any:
    config = sweep.config.scheduler
    if config.kind == "none":
        return FIFOScheduler()
    return EpochASHA(
        time_attr=EPOCHS_DONE,
        max_t=sweep.base.schedule.epochs,
        grace_period=config.grace_epochs,
        reduction_factor=config.reduction_factor,
    )


class EpochASHA(ASHAScheduler):
    """ASHA that leaves a trial at its last epoch alone: Tune's ASHA stops every trial that
    reaches ``max_t``, which would kill the run before its final test evaluation and model
    (the run ends by itself right after). Its rungs lie below ``max_t``, so nothing else
    changes."""

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if result.get(EPOCHS_DONE, 0) >= self._max_t:
            return TrialScheduler.CONTINUE
        return decision

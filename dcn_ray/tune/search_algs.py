"""``sweep.search`` and ``sweep.scheduler`` as Ray Tune's own objects: dcn-ray writes no sampler.

- ``random``: Tune's :class:`~ray.tune.search.basic_variant.BasicVariantGenerator`, seeded with
  ``sweep.search.seed`` (the same seed draws the same configurations);
- ``optuna``: Tune's :class:`~ray.tune.search.optuna.OptunaSearch` with Optuna's TPE sampler, seeded,
  under a :class:`~ray.tune.search.ConcurrencyLimiter` (TPE learns from finished trials, so few run
  at once); its first :func:`startup_trials` configurations are drawn at random, as TPE needs;
- ``asha``: Tune's :class:`~ray.tune.schedulers.ASHAScheduler` on the validation headline, its time
  being the training step each report carries.

A ``choice`` of lists (``model.kernels: {choice: [[4, 8, 16], [2, 8, 16]]}``) is handed to Tune as
labels (``"4-8-16"``), because Optuna's categorical distribution takes scalars only; :func:`decode`
turns a sampled configuration back into job values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from dcn_ray.job.search_config import Distribution, SchedulerConfig, SearchConfig
from dcn_ray.job.sweep_grid import value_text

SCALARS = (type(None), bool, int, float, str)


def startup_trials(trials: int) -> int:
    """Configurations TPE draws at random before it models: a third of the budget, 2 to 10 (Optuna's default)."""
    return min(10, max(2, math.ceil(trials / 3)))


def labels(distribution: Distribution) -> dict[str, Any] | None:
    """A choice of non-scalar options as ``{label: option}`` (None when every option is a scalar)."""
    if distribution.kind != "choice":
        return None
    options = distribution.args[0]
    if all(isinstance(o, SCALARS) for o in options):
        return None
    texts = [value_text(o) for o in options]
    if len(set(texts)) != len(texts):
        texts = [f"#{i}" for i in range(len(options))]
    return dict(zip(texts, options))


def domain(distribution: Distribution):
    """One distribution as Tune's domain (``tune.loguniform(1e-4, 1e-2)``...)."""
    from ray import tune

    kind, args = distribution.kind, distribution.args
    if kind == "choice":
        named = labels(distribution)
        return tune.choice(list(named) if named else list(args[0]))
    return {
        "uniform": tune.uniform,
        "loguniform": tune.loguniform,
        "randint": tune.randint,
        "quniform": tune.quniform,
        "qloguniform": tune.qloguniform,
    }[kind](*args)


def tune_space(search: SearchConfig) -> dict[str, Any]:
    """The space as Tune's ``param_space``: ``{"train.lr": tune.loguniform(...), ...}`` (flat job keys)."""
    return {key: domain(distribution) for key, distribution in search.distributions().items()}


def decode(search: SearchConfig, config: Mapping[str, Any]) -> dict[str, Any]:
    """A sampled configuration as job values (labels back to their lists; other keys dropped)."""
    values = {}
    for key, distribution in search.distributions().items():
        value = config[key]
        named = labels(distribution)
        if named is not None:
            value = named[value]
        elif distribution.kind == "randint":
            value = int(value)
        elif distribution.kind != "choice":
            value = float(value)
        values[key] = value
    return values


def search_algorithm(search: SearchConfig, *, metric: str, mode: str, max_concurrent: int):
    """Tune's search algorithm for ``search`` (random or optuna), seeded; pair it with :func:`param_space`."""
    if search.algorithm == "random":
        from ray.tune.search.basic_variant import BasicVariantGenerator

        return BasicVariantGenerator(random_state=search.seed, max_concurrent=max_concurrent)
    if search.algorithm == "optuna":
        from optuna.samplers import TPESampler
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        sampler = TPESampler(seed=search.seed, n_startup_trials=startup_trials(search.trials or 1))
        space = OptunaSearch.convert_search_space(tune_space(search))  # Optuna's own distributions: no warning
        optuna = OptunaSearch(space=space, metric=metric, mode=mode, sampler=sampler)
        return ConcurrencyLimiter(optuna, max_concurrent=max_concurrent)
    raise ValueError(f"no Tune search algorithm for {search.algorithm!r} (a grid is planned by tune.planner)")


def param_space(search: SearchConfig) -> dict[str, Any]:
    """What ``Tuner(param_space=...)`` takes beside :func:`search_algorithm`: the random generator
    samples Tune's ``param_space``; OptunaSearch holds its space itself (Tune refuses it twice)."""
    return tune_space(search) if search.algorithm == "random" else {}


def scheduler(config: SchedulerConfig, *, metric: str, mode: str, max_steps: int):
    """Tune's ASHA on ``metric`` over training steps (None: no early stopping)."""
    if not config.enabled:
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="step",
        metric=metric,
        mode=mode,
        max_t=max_steps,
        grace_period=min(config.grace_steps, max_steps),
        reduction_factor=config.reduction_factor,
        # a trial that reaches its last step ends by itself: its final report (test scores, F1-F3) follows it
        stop_last_trials=False,
    )

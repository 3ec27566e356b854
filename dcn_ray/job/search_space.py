"""A search space checked against the job, as a grid value is: every key a job key, every bound a value it takes.

:class:`~dcn_ray.job.search_config.SearchConfig` checks the shape of ``sweep.search`` alone; here each
key must be one ``--set`` accepts (not the sweep's own settings, ``name``, ``tracking.*`` or
``train.seed``, whose axis is ``sweep.seeds``), and each option of a ``choice`` and both ends of a
range are applied to the job and validated as the job they make, so a bad bound is refused before
anything runs, in one line naming its key. Nothing here imports Ray, Optuna or torch.
"""

from __future__ import annotations

from typing import Any

from dcn_ray.errors import InputError
from dcn_ray.job.config import JobConfig
from dcn_ray.job.search_config import SearchConfig
from dcn_ray.job.sweep_grid import FIXED_KEYS, FIXED_PREFIXES, value_text, with_params


def check_search(job: JobConfig, search: SearchConfig | None = None) -> None:
    """Refuse a space naming an unknown or fixed key, a bound its key does not take, or a clash with the grid.

    ``search``: the job's own ``sweep.search`` unless given. ASHA (``sweep.scheduler``) needs nothing
    here: it stops trials of a grid or of a search alike."""
    search = job.sweep.search if search is None else search
    if not search.enabled:
        return
    if job.sweep.grid:
        raise InputError(
            "sweep.search cannot be combined with sweep.grid: list the grid's values in the space as "
            "{choice: [...]} (or run two sweeps)"
        )
    if job.sweep.followup.enabled:
        raise InputError(
            "sweep.followup.enabled cannot be combined with sweep.search: follow-up rounds change the kernels "
            "of one DCN configuration of a grid"
        )
    if len(job.sweep.kernels) > 1:
        raise InputError(
            "sweep.search runs one kernel triple (sweep.kernels lists several): a search of kernels needs them "
            "in the space"
        )
    known = {k for k in {*JobConfig().flat(), *job.flat()} if not k.startswith("sweep.")}
    for key, distribution in search.distributions().items():
        if key in FIXED_KEYS or key.startswith(FIXED_PREFIXES):
            where = "sweep.seeds" if key == "train.seed" else "a separate sweep"
            raise InputError(f"sweep.search.space: {key} cannot be searched (use {where})")
        if key not in known:
            raise InputError(f"sweep.search.space: unknown job key '{key}'")
        for value in distribution.bounds():
            try:
                job_with(job, {key: value})
            except InputError as error:
                raise InputError(f"sweep.search.space.{key} ({value_text(value)}): {error}") from None


def job_with(job: JobConfig, values: dict[str, Any]) -> JobConfig:
    """The job with a configuration's values set (``model.family`` among them), validated."""
    values = dict(values)
    family = values.pop("model.family", None)
    return with_params(job, tuple(values.items()), None if family is None else str(family))

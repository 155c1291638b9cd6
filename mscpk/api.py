"""The one obvious entry point: :func:`simulate`."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._sizes import bucket
from ._validation import check_positive
from .calibration.defaults import default_kinetic, posterior_kinetic
from .dosing.regimen import Regimen
from .host.host import Host
from .mechanisms.switches import Mechanisms
from .model.model import Model
from .model.parameters import KineticParameters
from .observation.assays import DEFAULT_ASSAYS
from .physiology.species import Species
from .physiology.species import species as make_species
from .product.cell_product import CellProduct, cell_product
from .results import BAND_QUANTILES, SimulationResult
from .solve.segments import SolverConfig, solve


class SolveError(RuntimeError):
    """An ODE solve failed (e.g. it exceeded ``max_steps``); no result is returned."""


_solve_jit = eqx.filter_jit(solve)


@eqx.filter_jit
def _posterior_observations(model, stacked, table, times, t_end_h, solver):
    """Observations of every posterior draw, and whether all solves succeeded."""

    def one(p):
        m = eqx.tree_at(lambda q: q.parameters, model, p)
        sol = solve(m, table, times, t_end_h, solver)
        observed = m.observe(sol.ys, sol.blood_input)
        return {a.quantity: a(observed) for a in DEFAULT_ASSAYS}, sol.success

    obs, ok = jax.vmap(one)(stacked)
    return {k: jnp.quantile(v, jnp.asarray(BAND_QUANTILES), axis=0) for k, v in obs.items()}, jnp.all(ok)


def default_times(t_end_h: float, n: int = 241) -> np.ndarray:
    """Output grid: log-spaced early (so the first minutes are resolved) plus key times."""
    early = np.geomspace(1.0 / 60.0, t_end_h, n - 1)
    key = [0.0, 0.25, 1.0, 4.0, 24.0, 48.0, 72.0, 96.0, 168.0]
    return np.unique(np.concatenate([[0.0], early, [k for k in key if k <= t_end_h], [t_end_h]]))


def build_model(
    species="mouse", product="bm_msc", parameters=None, n_size_classes: int = 5, mechanisms=None, host=None
) -> Model:
    """Assemble a :class:`~mscpk.model.Model` from names or objects.

    ``parameters`` may be ``None`` (the defaults: the shipped posterior median where a
    posterior is shipped, see :mod:`mscpk.calibration.defaults`), a
    :class:`~mscpk.model.KineticParameters` (``KineticParameters.default()`` for the
    uncalibrated literature defaults), or a dict of changes to the defaults.
    """
    if isinstance(species, str):
        species = make_species(species)
    elif not isinstance(species, Species):
        raise TypeError(f"species: expected a name or a Species, got {type(species).__name__}")
    if isinstance(product, str):
        product = cell_product(product)
    elif not isinstance(product, CellProduct):
        raise TypeError(f"product: expected a preset name or a CellProduct, got {type(product).__name__}")
    if parameters is None:
        parameters = default_kinetic()
    elif isinstance(parameters, dict):
        parameters = default_kinetic().replace(**parameters)
    elif not isinstance(parameters, KineticParameters):
        raise TypeError(
            f"parameters: expected None, a dict or KineticParameters, got {type(parameters).__name__}"
        )
    mechanisms = Mechanisms() if mechanisms is None else mechanisms
    if not isinstance(mechanisms, Mechanisms):
        raise TypeError(f"mechanisms: expected a Mechanisms, got {type(mechanisms).__name__}")
    host = Host() if host is None else host
    if not isinstance(host, Host):
        raise TypeError(f"host: expected a Host, got {type(host).__name__}")
    return Model(species, product, parameters, n_size_classes, mechanisms, host)


def simulate(
    species: str | Species = "mouse",
    product: str | CellProduct = "bm_msc",
    regimen: Regimen | None = None,
    *,
    cells: float | None = None,
    route: str = "iv",
    infusion_h: float | None = None,
    device: str | None = None,
    site: str = "peripheral",
    t_end_h: float = 72.0,
    times_h=None,
    parameters=None,
    solver: SolverConfig | None = None,
    n_size_classes: int = 5,
    mechanisms: Mechanisms | None = None,
    host: Host | None = None,
    posterior: bool | int = False,
) -> SimulationResult:
    """Simulate a cell product given to a species and return a :class:`SimulationResult`.

    **Arguments:**

    - ``species``: ``"mouse"``, ``"rat"``, ``"human"`` or a :class:`~mscpk.Species`.
    - ``product``: a preset name (:func:`mscpk.product.presets`) or a
      :class:`~mscpk.CellProduct`.
    - ``regimen``: a :class:`~mscpk.Regimen`; or instead give ``cells`` (with ``route`` and
      optionally ``infusion_h``, an infusion ``device`` and the venous access ``site``) for
      a single dose at time 0.
    - ``t_end_h``: end of the simulation (h, > 0).
    - ``times_h``: output times (h) in ``[0, t_end_h]``; default a log-spaced grid.
    - ``parameters``: ``None`` (defaults), a dict of changes, or ``KineticParameters``.
    - ``solver``: a :class:`~mscpk.SolverConfig`.
    - ``n_size_classes``: diameter classes resolving the product's size distribution.
    - ``mechanisms``: :class:`~mscpk.Mechanisms` switches (default: all on).
    - ``host``: a :class:`~mscpk.Host` (default: immunocompetent, uninjured, 1 g).
    - ``posterior``: ``True`` (every draw of the shipped posterior sample) or a number of
      draws: also simulate those parameter sets and put the pointwise 5%, 50% and 95%
      quantiles of every observation in :attr:`SimulationResult.bands` (a 90% band).
      The main result stays the simulation at the posterior median. Needs a shipped
      posterior and ``parameters=None``.

    Raises ``ValueError``/``TypeError`` on bad input and :class:`SolveError` if a solve fails.
    """
    if isinstance(t_end_h, bool) or not isinstance(t_end_h, int | float | np.floating | np.integer):
        raise TypeError(f"t_end_h: expected a number of hours, got {type(t_end_h).__name__}")
    check_positive("t_end_h", t_end_h)
    t_end_h = float(t_end_h)
    if regimen is None:
        if cells is None:
            raise ValueError("cells: give either a regimen or the number of cells for a single dose")
        regimen = (
            Regimen.bolus(cells, route=route, site=site)
            if infusion_h is None
            else Regimen.infusion(cells, infusion_h, route=route, device=device, site=site)
        )
        if device is not None and infusion_h is None:
            raise ValueError("device: settling in a device needs an infusion (give infusion_h)")
    elif cells is not None or infusion_h is not None or device is not None or site != "peripheral":
        raise ValueError("regimen: give either a regimen or cells/infusion_h, not both")
    elif not isinstance(regimen, Regimen):
        raise TypeError(f"regimen: expected a Regimen, got {type(regimen).__name__}")
    regimen.check_horizon(t_end_h)
    times = default_times(t_end_h) if times_h is None else _check_times(times_h, t_end_h)
    if isinstance(posterior, bool):
        n_draws = None if posterior else 0
    elif isinstance(posterior, int | np.integer) and posterior >= 1:
        n_draws = int(posterior)
    else:
        raise ValueError(f"posterior: expected True/False or a number of draws >= 1, got {posterior!r}")
    if n_draws != 0 and parameters is not None:
        raise ValueError("posterior: bands use the shipped posterior's parameter sets; give parameters=None")
    model = build_model(species, product, parameters, n_size_classes, mechanisms, host)
    solver = SolverConfig() if solver is None else solver
    # One compiled solve serves many settings: the end time is an array, categorical
    # settings that only set numbers are numbers (Model.numeric_equivalent), and output
    # times and dose rows are padded to a bucket size (padding is sliced off below).
    n_t = times.size
    inputs = (
        model.numeric_equivalent(),
        regimen.table(bucket(regimen.n_rows, 1)),
        jnp.asarray(np.concatenate([times, np.full(bucket(n_t, 16) - n_t, t_end_h)])),
        jnp.asarray(t_end_h),
    )
    sol = _solve_jit(*inputs, solver)
    if not bool(sol.success):
        raise SolveError(
            f"the ODE solve failed (solver={solver.solver}, rtol={solver.rtol}, max_steps={solver.max_steps}); "
            "try a larger max_steps or the kvaerno5 solver"
        )
    bands = None
    if n_draws != 0:
        stacked = posterior_kinetic(n_draws)  # raises if no posterior is shipped
        bands, ok = _posterior_observations(*inputs[:1], stacked, *inputs[1:], solver)
        if not bool(ok):
            raise SolveError("the ODE solve failed for a posterior draw; try a larger max_steps")
        bands = {k: np.asarray(v)[:, :n_t] for k, v in bands.items()}
    return SimulationResult(
        model=model,
        regimen=regimen,
        times_h=np.asarray(sol.ts)[:n_t],
        states=np.asarray(sol.ys)[:n_t],
        blood_input=np.asarray(sol.blood_input)[:n_t],
        t_end_h=t_end_h,
        n_steps=int(sol.n_steps),
        bands=bands,
    )


def _check_times(times_h, t_end_h: float) -> np.ndarray:
    times = np.asarray(times_h, dtype=float)
    if times.ndim != 1 or times.size == 0:
        raise ValueError(f"times_h: expected a non-empty 1-D sequence of hours, got shape {times.shape}")
    if not np.all(np.isfinite(times)):
        raise ValueError("times_h: must be finite")
    if np.any(times < 0) or np.any(times > t_end_h):
        raise ValueError(
            f"times_h: every time must lie in [0, t_end_h={t_end_h:g}] h, got {times.min():g}..{times.max():g}"
        )
    return np.unique(times)

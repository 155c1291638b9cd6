"""Virtual populations: subjects drawn from a key, simulated in chunks with bounded memory.

A virtual subject is the reference :class:`~mscpk.Model` with its physiology, its dose of
the cell product and a few kinetic rates redrawn (:class:`Variability`):

- **physiology, correlated through body weight**: body weight is log-normal around the
  species' reference; organ volumes and blood volume scale in proportion to it and cardiac
  output to the 3/4 power (the allometric exponent of flows that goes with the -1/4 of
  rate constants, West et al. 1997, see :func:`mscpk.physiology.species.allometric_factor`),
  each with its own residual log-normal scatter; arterial supply fractions, capillary
  diameters and haematocrit stay at the reference. Rate constants follow body weight
  through the model's own allometric scaling.
- **product (lot to lot)**: mean cell diameter log-normal; viability and tissue-factor
  positive fraction logit-normal.
- **kinetics**: multiplicative log-normal scatter on the death rates of arrested cells and
  on their release rates (per subject, the same factor for every organ).

Subject ``i`` is drawn from ``jax.random.fold_in(key, i)``, so a population does not
depend on the chunk size: the same key gives the same subjects, bit for bit, however the
population is split. :func:`simulate_population` compiles one chunk (vmapped solves) and
keeps only the requested output series per subject, so memory is bounded by the chunk
size plus ``N x T`` per output.

Every default spread in :class:`Variability` is an **assumption** (no cited population
data in the literature file yet): it is labelled so in its docstring with its reasoning;
give your own for a study.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .model.model import Model
from .observation.assays import DEFAULT_ASSAYS
from .solve.segments import SolverConfig, relevant_slots, solve

_ASSAY = {a.quantity: a for a in DEFAULT_ASSAYS}
#: Allometric exponent of cardiac output (flows scale as BW^(3/4); West et al. 1997,
#: Science 276:122, doi:10.1126/science.276.5309.122 - the -1/4 of rate constants times BW).
CARDIAC_OUTPUT_EXPONENT = 0.75


class Variability(eqx.Module):
    """Between-subject spreads (all static numbers >= 0; 0 switches a source off).

    Log-normal spreads are given as coefficients of variation (``cv``: the SD of the log
    is ``sqrt(log(1 + cv^2))``); logit-normal ones as the SD on the logit scale.

    Defaults, **all assumptions** (reasoning, not data):

    - ``body_weight_cv`` 0.2: adult body weight within a sex and strain or population
      commonly spans about +-20% (1 SD) in virtual-population PBPK work.
    - ``organ_volume_cv`` 0.1, ``blood_volume_cv`` 0.1, ``cardiac_output_cv`` 0.15:
      residual scatter after body-weight scaling, smaller than that of body weight.
    - ``diameter_cv`` 0.05: lot-to-lot change of the mean diameter of one cell type.
    - ``viability_logit_sd`` 0.3, ``tf_logit_sd`` 0.5: lot-to-lot release-test scatter
      (viability 0.9 spans about 0.87-0.92 at 1 SD; tissue factor varies more by donor).
    - ``death_rate_cv`` 0.3, ``release_rate_cv`` 0.3: subject-to-subject difference in
      how fast arrested cells die and are released; the data that calibrate these rates
      (:mod:`mscpk.calibration`) spread at least this much between studies.
    """

    body_weight_cv: float = eqx.field(static=True, default=0.2)
    organ_volume_cv: float = eqx.field(static=True, default=0.1)
    blood_volume_cv: float = eqx.field(static=True, default=0.1)
    cardiac_output_cv: float = eqx.field(static=True, default=0.15)
    diameter_cv: float = eqx.field(static=True, default=0.05)
    viability_logit_sd: float = eqx.field(static=True, default=0.3)
    tf_logit_sd: float = eqx.field(static=True, default=0.5)
    death_rate_cv: float = eqx.field(static=True, default=0.3)
    release_rate_cv: float = eqx.field(static=True, default=0.3)

    def __check_init__(self):
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise TypeError(f"Variability.{name}: expected a finite number, got {value!r}")
            if value < 0:
                raise ValueError(f"Variability.{name}: must be >= 0, got {value!r}")


def _log_sd(cv: float) -> float:
    return math.sqrt(math.log1p(cv * cv))


def _lognormal(key, cv: float, shape=()):
    """Median-1 log-normal factor with coefficient of variation ``cv``."""
    return jnp.exp(_log_sd(cv) * jax.random.normal(key, shape))


def _logit_shift(key, p, sd: float):
    p = jnp.clip(p, 1e-9, 1.0 - 1e-9)
    return jax.nn.sigmoid(jnp.log(p) - jnp.log1p(-p) + sd * jax.random.normal(key))


def subject(model: Model, key, variability: Variability | None = None) -> Model:
    """One virtual subject: ``model`` with physiology, product and rates redrawn from
    ``key`` (see the module docstring; ``variability`` default :class:`Variability`).
    Traceable: vmap it over keys."""
    v = Variability() if variability is None else variability
    ks = jax.random.split(key, 9)
    sp, pr, kp = model.species, model.product, model.parameters
    bw_factor = _lognormal(ks[0], v.body_weight_cv)
    n_organs = sp.organ_volume_ml.shape[0]
    species = eqx.tree_at(
        lambda s: (s.body_weight_g, s.organ_volume_ml, s.blood_volume_ml, s.cardiac_output_ml_per_h),
        sp,
        (
            sp.body_weight_g * bw_factor,
            sp.organ_volume_ml * bw_factor * _lognormal(ks[1], v.organ_volume_cv, (n_organs,)),
            sp.blood_volume_ml * bw_factor * _lognormal(ks[2], v.blood_volume_cv),
            sp.cardiac_output_ml_per_h
            * bw_factor**CARDIAC_OUTPUT_EXPONENT
            * _lognormal(ks[3], v.cardiac_output_cv),
        ),
    )
    product = eqx.tree_at(
        lambda p: (p.diameter_mean_um, p.viability, p.tf_positive_fraction),
        pr,
        (
            pr.diameter_mean_um * _lognormal(ks[4], v.diameter_cv),
            _logit_shift(ks[5], pr.viability, v.viability_logit_sd),
            jnp.where(
                pr.tf_positive_fraction > 0, _logit_shift(ks[6], pr.tf_positive_fraction, v.tf_logit_sd), 0.0
            ),
        ),
    )
    parameters = eqx.tree_at(
        lambda p: (p.death_rate_per_h, p.release_rate_per_h),
        kp,
        (
            kp.death_rate_per_h * _lognormal(ks[7], v.death_rate_cv),
            kp.release_rate_per_h * _lognormal(ks[8], v.release_rate_cv),
        ),
    )
    return eqx.tree_at(lambda m: (m.species, m.product, m.parameters), model, (species, product, parameters))


def subject_keys(key, start: int, stop: int):
    """Keys of subjects ``start .. stop-1`` (``fold_in(key, i)``: independent of chunking)."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(start, stop, dtype=jnp.uint32))


#: :func:`simulate_population`'s default outputs.
_DEFAULT_OUTPUTS = (("viable_cells", "lung"), ("viable_cells", "whole_body"))


def _check_outputs(outputs) -> tuple[tuple[str, str], ...]:
    if isinstance(outputs, tuple) and len(outputs) == 2 and all(isinstance(o, str) for o in outputs):
        outputs = (outputs,)
    checked = []
    for item in outputs:
        if not (isinstance(item, tuple | list) and len(item) == 2):
            raise TypeError(f"outputs: expected (quantity, organ) pairs, got {item!r}")
        quantity, organ = item
        if quantity not in _ASSAY:
            raise ValueError(f"outputs: unknown quantity {quantity!r}; allowed: {', '.join(_ASSAY)}")
        organs = _ASSAY[quantity].organs
        if organ not in organs:
            raise ValueError(f"outputs: {quantity!r} has no output {organ!r}; allowed: {', '.join(organs)}")
        checked.append((quantity, organ))
    if not checked:
        raise ValueError("outputs: give at least one (quantity, organ) pair")
    return tuple(checked)


@dataclass
class PopulationResult:
    """Per-subject output series of a virtual population.

    ``values[(quantity, organ)]`` is an (N, T) array at ``times_h``; ``success`` (N,) is
    whether each subject's solve succeeded (failed subjects' rows are NaN, never zeros);
    ``n_steps`` (N,) solver steps per subject. ``meta`` records the call (``n``, ``first``,
    ``variability``, ``outputs``, ``t_end_h``, ``devices``) and the state slots integrated:
    ``slots`` (their number) and ``slot_indices`` (the indices; ``None`` when every slot
    was, ``reduced=False``).
    """

    times_h: np.ndarray
    values: dict
    success: np.ndarray
    n_steps: np.ndarray
    seconds: float = 0.0
    chunk_size: int = 0
    meta: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.success.shape[0])

    def quantiles(self, q=(0.05, 0.5, 0.95)) -> dict:
        """``{(quantity, organ): array (len(q), T)}`` over the subjects that solved."""
        ok = self.success
        return {k: np.quantile(v[ok], np.asarray(q), axis=0) for k, v in self.values.items()}


def _shard_map(f, mesh):
    """``shard_map`` of ``f`` over the mesh's ``subjects`` axis (``jax.shard_map`` where it
    exists, else ``jax.experimental.shard_map``); replication checks off (the solves are
    while loops, for which the old checker has no rule)."""
    from jax.sharding import PartitionSpec as P

    if hasattr(jax, "shard_map"):
        return jax.shard_map(f, mesh=mesh, in_specs=P("subjects"), out_specs=P("subjects"), check_vma=False)
    from jax.experimental.shard_map import shard_map

    return shard_map(f, mesh=mesh, in_specs=P("subjects"), out_specs=P("subjects"), check_rep=False)


def _series(model: Model, ys, blood_input, columns):
    observed = model.observe(ys, blood_input)
    return jnp.stack([_ASSAY[q](observed)[:, j] for q, j in columns])


class _Outputs(eqx.Module):
    """The output series of one state (hashable: one compilation per set of outputs)."""

    columns: tuple = eqx.field(static=True)

    def __call__(self, model: Model, y):
        return _series(model, y[None], jnp.zeros((1, model.n_size_classes)), self.columns)


def output_slots(model: Model, table, columns) -> tuple[int, ...]:
    """State slots the output ``columns`` ((quantity, organ index) pairs) depend on for
    ``model`` given the dose ``table`` (:func:`mscpk.solve.segments.relevant_slots`)."""
    return relevant_slots(model, table, _Outputs(tuple(columns)))


@eqx.filter_jit
def _chunk(model, variability, table, times, t_end_h, solver, keys, columns, mesh, slots):
    def one(k):
        m = subject(model, k, variability)
        sol = solve(m, table, times, t_end_h, solver, slots)
        return _series(m, sol.ys, sol.blood_input, columns), sol.success, sol.n_steps

    batch = jax.vmap(one)
    return batch(keys) if mesh is None else _shard_map(batch, mesh)(keys)


def _mesh(devices):
    """A 1-D ``subjects`` mesh over ``devices`` (default: every local device); ``None`` for one."""
    from jax.sharding import Mesh

    if devices is None:
        devices = jax.local_devices()
    if (
        not isinstance(devices, list | tuple)
        or not devices
        or not all(isinstance(d, jax.Device) for d in devices)
    ):
        raise TypeError(f"devices: expected a non-empty sequence of jax devices, got {devices!r}")
    return None if len(devices) == 1 else Mesh(np.array(devices), ("subjects",))


#: Default subjects per device and chunk on CPUs when the number of integrated slots is
#: not given (the reduced default model's choice; see :func:`chunk_for`).
CPU_CHUNK_PER_DEVICE = 64
#: On CPUs the default chunk holds about this many subjects x integrated state slots per
#: device, so the solver's stage vectors stay in cache (2-core VM, session 22, side by
#: side: every slot (283) at 16 per device 212-300 subjects/s against 165-233 at 64;
#: the 60 slots of viable cells best at 64 per device, 1,477-1,502/s against
#: 1,312-1,365 at 16 and 1,329-1,365 at 32).
CPU_SLOTS_PER_DEVICE = 4096
#: Default chunk on accelerators: ~12 GB of a GPU's memory for the default model (48 GB at
#: 250,000 measured on an H100), throughput there is flat from 100,000.
ACCELERATOR_CHUNK = 65_536


def chunk_for(n: int, chunk_size: int | None = None, devices=None, n_slots: int | None = None) -> int:
    """The chunk :func:`simulate_population` uses for ``n`` subjects: ``chunk_size``, at
    most ``n``, rounded up to a multiple of the devices. Default on CPUs: per device, the
    power of two nearest :data:`CPU_SLOTS_PER_DEVICE` / ``n_slots`` (the integrated state
    slots), within 8-256 (64 for the 60 slots of viable cells, 16 for all 283 of the
    default model; :data:`CPU_CHUNK_PER_DEVICE` if ``n_slots`` is not given); on
    accelerators :data:`ACCELERATOR_CHUNK`."""
    if n_slots is not None and (
        isinstance(n_slots, bool) or not isinstance(n_slots, int | np.integer) or n_slots < 1
    ):
        raise ValueError(
            f"n_slots: expected None or an integer >= 1 (integrated state slots), got {n_slots!r}"
        )
    devices = jax.local_devices() if devices is None else list(devices)
    n_dev = len(devices)
    if chunk_size is None:
        if devices[0].platform != "cpu":
            chunk_size = ACCELERATOR_CHUNK
        elif n_slots is None:
            chunk_size = CPU_CHUNK_PER_DEVICE * n_dev
        else:
            per_device = 2 ** round(math.log2(CPU_SLOTS_PER_DEVICE / int(n_slots)))
            chunk_size = min(max(per_device, 8), 256) * n_dev
    return -(-int(min(chunk_size, n)) // n_dev) * n_dev


def population_slots(model: Model, regimen, outputs=None, reduced: bool = True) -> tuple[int, ...] | None:
    """The state slots :func:`simulate_population` integrates for these arguments
    (``outputs`` default: its default outputs); ``None`` when every slot is
    (``reduced=False``)."""
    outputs = _check_outputs(_DEFAULT_OUTPUTS if outputs is None else outputs)
    if not reduced:
        return None
    return output_slots(model, regimen.table(), _columns(outputs))


def _columns(outputs) -> tuple:
    return tuple((q, _ASSAY[q].organs.index(o)) for q, o in outputs)


def simulate_population(
    model: Model,
    regimen,
    times_h,
    t_end_h: float,
    n: int,
    key,
    *,
    variability: Variability | None = None,
    outputs=None,
    chunk_size: int | None = None,
    solver: SolverConfig | None = None,
    on_failure: str = "raise",
    devices=None,
    first: int = 0,
    reduced: bool = True,
) -> PopulationResult:
    """Simulate ``n`` virtual subjects of ``model`` given ``regimen``: subjects ``first``
    to ``first + n - 1`` of ``key``.

    - ``times_h``: output times (h) in ``[0, t_end_h]``.
    - ``outputs``: (quantity, organ) pairs kept per subject (:data:`mscpk.QUANTITIES`,
      :data:`mscpk.OUTPUT_ORGANS`); default viable cells in lung and whole body.
    - ``chunk_size``: subjects solved per compiled, vmapped call; memory scales with it.
      Default (``None``, :func:`chunk_for`): on CPUs about :data:`CPU_SLOTS_PER_DEVICE`
      subjects x integrated slots per device, where small batches stay in cache and a
      batch runs as long as its slowest subject (measured on 2 cores with every slot:
      96 subjects/s at 16-64 per device, 67/s at 1,024, 38/s at 4,096, in session 7;
      16 per device 1.3x faster than 64 in session 22), and :data:`ACCELERATOR_CHUNK`
      on a GPU (throughput flat from 100,000 on an H100; see ``benchmarks/RESULTS.md``).
      The last chunk is filled up with further subjects of the same key (solved, then
      dropped), so one compilation serves every chunk.
    - ``on_failure``: ``"raise"`` (:class:`mscpk.SolveError` naming the failed subjects)
      or ``"mask"`` (their rows become NaN and ``success`` is False).
    - ``devices``: devices to spread each chunk over (``shard_map`` of the vmapped solve
      over a 1-D ``subjects`` mesh); default every local device. The chunk is rounded up
      to a multiple of their number. Results do not depend on the number of devices.
      On several hosts, start each process with ``jax.distributed.initialize()`` and give
      each its share of subjects (e.g. ``key`` folded with ``jax.process_index()``, or
      disjoint index ranges); every host then simulates over its own local devices.
    - ``reduced``: integrate only the state slots the ``outputs`` depend on
      (:func:`output_slots`: e.g. 60 of 283 for viable cells of the default mouse model).
      Exact: no left-out slot feeds into a kept one; the outputs differ from the full
      solve's only within the solver tolerance, since the error control then sees the
      kept slots alone. ``False`` integrates every slot.
    - ``first``: index of the first subject. Subject ``i`` is drawn from ``fold_in(key, i)``,
      so a population split into index ranges (``first=0, n=k`` and ``first=k, n=N-k``;
      separate processes, hosts or sessions) is the population of one call, row for row.
    """
    from .api import SolveError
    from .dosing.regimen import Regimen

    if not isinstance(model, Model):
        raise TypeError(f"model: expected a Model, got {type(model).__name__}")
    if not isinstance(regimen, Regimen):
        raise TypeError(f"regimen: expected a Regimen, got {type(regimen).__name__}")
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"n: expected an integer >= 1, got {n!r}")
    if isinstance(first, bool) or not isinstance(first, int | np.integer) or first < 0:
        raise ValueError(f"first: expected an integer >= 0, got {first!r}")
    if first + n > 2**32:
        raise ValueError(f"first + n: subject indices are uint32, got first={first} n={n} (> 2**32)")
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int | np.integer) or chunk_size < 1
    ):
        raise ValueError(f"chunk_size: expected None or an integer >= 1, got {chunk_size!r}")
    if not isinstance(reduced, bool):
        raise TypeError(f"reduced: expected a bool, got {reduced!r}")
    if on_failure not in ("raise", "mask"):
        raise ValueError(f"on_failure: {on_failure!r}; allowed: raise, mask")
    variability = Variability() if variability is None else variability
    if not isinstance(variability, Variability):
        raise TypeError(f"variability: expected a Variability, got {type(variability).__name__}")
    if not (isinstance(t_end_h, int | float | np.floating | np.integer) and t_end_h > 0):
        raise ValueError(f"t_end_h: expected hours > 0, got {t_end_h!r}")
    times = np.asarray(times_h, dtype=float)
    if times.ndim != 1 or times.size == 0 or np.any(times < 0) or np.any(times > t_end_h):
        raise ValueError(f"times_h: expected a non-empty 1-D array of hours in [0, {t_end_h:g}]")
    regimen.check_horizon(float(t_end_h))
    outputs = _check_outputs(_DEFAULT_OUTPUTS if outputs is None else outputs)
    columns = _columns(outputs)
    solver = SolverConfig() if solver is None else solver
    mesh = _mesh(devices)
    n_dev = 1 if mesh is None else mesh.size
    table = regimen.table()
    slots = population_slots(model, regimen, outputs, reduced)
    chunk = chunk_for(n, chunk_size, devices, model.n_states if slots is None else len(slots))
    t_jax, t_end = jnp.asarray(times), jnp.asarray(float(t_end_h))
    values = np.empty((len(outputs), n, times.size))
    success = np.empty(n, dtype=bool)
    steps = np.empty(n, dtype=np.int64)
    t0 = time.perf_counter()
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        keys = subject_keys(key, first + start, first + start + chunk)
        series, ok, ns = _chunk(model, variability, table, t_jax, t_end, solver, keys, columns, mesh, slots)
        m = stop - start
        values[:, start:stop] = np.moveaxis(np.asarray(series[:m]), 1, 0)
        success[start:stop] = np.asarray(ok[:m])
        steps[start:stop] = np.asarray(ns[:m])
    seconds = time.perf_counter() - t0
    if not success.all():
        failed = np.flatnonzero(~success)
        if on_failure == "raise":
            raise SolveError(
                f"the ODE solve failed for {failed.size} of {n} subjects (subject indices: {(first + failed[:10]).tolist()}); "
                "use on_failure='mask' to keep the others, or a larger max_steps"
            )
        values[:, failed] = np.nan
    return PopulationResult(
        times_h=times,
        values={o: values[i] for i, o in enumerate(outputs)},
        success=success,
        n_steps=steps,
        seconds=seconds,
        chunk_size=chunk,
        meta={
            "n": n,
            "first": int(first),
            "variability": variability,
            "outputs": outputs,
            "t_end_h": float(t_end_h),
            "devices": n_dev,
            "slots": len(slots) if slots is not None else model.n_states,
            "slot_indices": slots,
        },
    )

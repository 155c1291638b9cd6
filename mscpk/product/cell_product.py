"""The administered cell product: cell type, diameter distribution, viability.

Presets live in ``product/data/cell_presets.csv``, one row per number with its source.
The diameter distribution is log-normal with the given mean and standard deviation;
the model resolves it into a few diameter classes by Gauss-Hermite quadrature, so that
cells that slip through the lung on the first pass are the small ones and stay small
on the next pass (a single mean diameter would re-trap them as if they were average).
"""

from __future__ import annotations

import functools
from importlib import resources

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jaxtyping import Array, Float

from .._validation import check_choice, check_positive, check_range, concrete

PREPARATIONS: tuple[str, ...] = ("fresh", "thawed", "rescued")
DONORS: tuple[str, ...] = ("autologous", "syngeneic", "hla_matched", "allogeneic", "xenogeneic")
CULTURES: tuple[str, ...] = ("2d", "spheroid", "microgravity")


class CellProduct(eqx.Module):
    """A cell product as administered.

    **Arguments:**

    - ``name``: preset or user label (static).
    - ``diameter_mean_um``: mean cell diameter in suspension (µm).
    - ``diameter_sd_um``: standard deviation of the diameter (µm; 0 for one size).
    - ``viability``: fraction of administered cells alive at injection, in [0, 1]; the
      rest enter as dead cells (0 describes a heat-killed product).
    - ``preparation``: ``"fresh"`` (from culture), ``"thawed"`` (given right after
      thawing) or ``"rescued"`` (thawed, then cultured for ``rescue_h`` hours) (static).
    - ``rescue_h``: hours of culture after thawing (only for ``"rescued"``, > 0).
    - ``tf_positive_fraction``: fraction of cells expressing tissue factor (CD142), [0, 1].
    - ``donor``: donor match to the host: ``"autologous"``, ``"syngeneic"``,
      ``"hla_matched"``, ``"allogeneic"`` or ``"xenogeneic"`` (static).
    - ``culture``: expansion condition, ``"2d"``, ``"spheroid"`` or ``"microgravity"``
      (static; a label: its effects enter through diameter and potency, see
      :func:`cell_product`).
    - ``potency``: immunomodulatory potency relative to 2D-expanded cells (> 0); damps
      the activation of anti-donor immunity.
    """

    name: str = eqx.field(static=True)
    diameter_mean_um: Float[Array, ""]
    diameter_sd_um: Float[Array, ""]
    viability: Float[Array, ""]
    preparation: str = eqx.field(static=True)
    rescue_h: Float[Array, ""]
    tf_positive_fraction: Float[Array, ""]
    donor: str = eqx.field(static=True)
    culture: str = eqx.field(static=True)
    potency: Float[Array, ""]

    def __init__(
        self,
        name: str,
        diameter_mean_um,
        diameter_sd_um,
        viability,
        preparation: str = "fresh",
        rescue_h=0.0,
        tf_positive_fraction=0.0,
        donor: str = "syngeneic",
        culture: str = "2d",
        potency=1.0,
    ):
        if not isinstance(name, str):
            raise TypeError(f"CellProduct.name: expected a str, got {type(name).__name__}")
        self.name = name
        self.diameter_mean_um = jnp.asarray(diameter_mean_um, dtype=float)
        self.diameter_sd_um = jnp.asarray(diameter_sd_um, dtype=float)
        self.viability = jnp.asarray(viability, dtype=float)
        self.preparation = check_choice("CellProduct.preparation", preparation, PREPARATIONS)
        self.rescue_h = jnp.asarray(rescue_h, dtype=float)
        self.tf_positive_fraction = jnp.asarray(tf_positive_fraction, dtype=float)
        self.donor = check_choice("CellProduct.donor", donor, DONORS)
        self.culture = check_choice("CellProduct.culture", culture, CULTURES)
        self.potency = jnp.asarray(potency, dtype=float)

    def __check_init__(self):
        check_range("CellProduct.diameter_mean_um", self.diameter_mean_um, 1.0, 500.0)
        check_positive("CellProduct.diameter_sd_um", self.diameter_sd_um, allow_zero=True)
        check_range("CellProduct.viability", self.viability, 0.0, 1.0)
        check_positive("CellProduct.rescue_h", self.rescue_h, allow_zero=True)
        check_range("CellProduct.tf_positive_fraction", self.tf_positive_fraction, 0.0, 1.0)
        check_positive("CellProduct.potency", self.potency)
        rescue = concrete(self.rescue_h)
        if rescue is not None:
            if self.preparation == "rescued" and not float(rescue) > 0:
                raise ValueError(
                    f"CellProduct.rescue_h: a rescued product needs rescue_h > 0, got {float(rescue)!r}"
                )
            if self.preparation != "rescued" and float(rescue) != 0:
                raise ValueError(
                    f"CellProduct.rescue_h: only a 'rescued' product has rescue hours; got rescue_h={float(rescue)!r} "
                    f"with preparation={self.preparation!r}"
                )

    def cryo_injury(self, recovery_time_h) -> Float[Array, ""]:
        """Cryo-injury index: 0 fresh, 1 freshly thawed, ``exp(-rescue_h / recovery_time_h)``
        after culture rescue (Antebi et al. 2019 J Transl Med 17:297: 24 h acclimation
        after thawing restores potency and lowers apoptosis)."""
        if self.preparation == "fresh":
            return jnp.zeros(())
        if self.preparation == "thawed":
            return jnp.ones(())
        return jnp.exp(-self.rescue_h / recovery_time_h)

    def size_classes(self, n_classes: int) -> tuple[Float[Array, " S"], Float[Array, " S"]]:
        """Diameters (µm) and weights (summing to 1) of ``n_classes`` quadrature classes.

        Gauss-Hermite quadrature of the log-normal with this mean and SD; exact for
        polynomials in log-diameter up to degree ``2 n - 1``.
        """
        nodes, weights = _gauss_hermite(n_classes)
        cv2 = (self.diameter_sd_um / self.diameter_mean_um) ** 2
        sigma = jnp.sqrt(jnp.log1p(cv2))
        mu = jnp.log(self.diameter_mean_um) - 0.5 * jnp.log1p(cv2)
        return jnp.exp(mu + jnp.sqrt(2.0) * sigma * jnp.asarray(nodes)), jnp.asarray(weights)

    def replace(self, **changes) -> "CellProduct":
        """A copy with some fields changed (validated again)."""
        fields = dict(
            name=self.name,
            diameter_mean_um=self.diameter_mean_um,
            diameter_sd_um=self.diameter_sd_um,
            viability=self.viability,
            preparation=self.preparation,
            rescue_h=self.rescue_h,
            tf_positive_fraction=self.tf_positive_fraction,
            donor=self.donor,
            culture=self.culture,
            potency=self.potency,
        )
        unknown = set(changes) - set(fields)
        if unknown:
            raise ValueError(
                f"CellProduct.replace: unknown field(s) {sorted(unknown)}; allowed: {sorted(fields)}"
            )
        fields.update(changes)
        return CellProduct(**fields)


@functools.cache
def _gauss_hermite(n: int):
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n_size_classes: must be an int >= 1, got {n!r}")
    x, w = np.polynomial.hermite.hermgauss(n)
    return x, w / np.sqrt(np.pi)  # NumPy: a cached JAX array could leak a tracer


@functools.cache
def preset_table() -> pd.DataFrame:
    """Shipped presets, one cited number per row."""
    with resources.files("mscpk.product").joinpath("data/cell_presets.csv").open() as f:
        return pd.read_csv(f, comment="#")


def presets() -> tuple[str, ...]:
    """Names of the shipped cell-product presets."""
    return tuple(p for p in dict.fromkeys(preset_table().preset) if p not in _MODIFIER_ROWS)


#: Rows of the preset table that modify a product rather than define one.
_MODIFIER_ROWS = ("microgravity_msc",)


def rows_of(key: str):
    """The ``field -> value`` rows of one preset (or modifier) in the shipped table."""
    return preset_table()[preset_table().preset == key].set_index("field").value


def cell_product(name: str, **overrides) -> CellProduct:
    """A preset cell product, optionally with fields overridden (e.g. ``viability=0.7``).

    Overriding ``diameter_mean_um`` alone keeps the preset's coefficient of variation
    (the SD scales with the mean); pass ``diameter_sd_um`` to set the spread yourself.
    """
    key = check_choice("product", name, presets())
    rows = rows_of(key)
    fields = dict(
        diameter_mean_um=float(rows["diameter_mean_um"]),
        diameter_sd_um=float(rows["diameter_sd_um"]),
        viability=float(rows["viability"]),
        tf_positive_fraction=float(rows["tf_positive_fraction"]),
    )
    allowed = set(fields) | {"preparation", "rescue_h", "donor", "culture", "potency"}
    unknown = set(overrides) - allowed
    if unknown:
        raise ValueError(f"cell_product: unknown field(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    culture = check_choice("culture", overrides.get("culture", "2d"), CULTURES)
    if culture != "2d" and key in ("bm_mnc", "hsc"):
        raise ValueError(f"culture: {culture!r} applies to MSC products, not to {key!r}")
    if culture == "spheroid" and "diameter_mean_um" not in overrides:
        # Cells dissociated from 3D spheroids are smaller (Ge et al. 2014).
        overrides = dict(overrides, diameter_mean_um=float(rows_of("spheroid_msc")["diameter_mean_um"]))
    if culture == "microgravity" and "potency" not in overrides:
        overrides = dict(overrides, potency=float(rows_of("microgravity_msc")["potency"]))
    if "diameter_mean_um" in overrides and "diameter_sd_um" not in overrides:
        cv = fields["diameter_sd_um"] / fields["diameter_mean_um"]
        overrides = dict(overrides, diameter_sd_um=cv * overrides["diameter_mean_um"])
    fields.update(overrides)
    return CellProduct(name=key, **fields)

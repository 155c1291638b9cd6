"""The recipient of the cells and its environment.

**Arguments of** :class:`Host`:

- ``immune_status``: ``"competent"``, ``"athymic"`` (no T cells; NK cells remain) or
  ``"nsg"`` (no T, B or NK cells) (static).
- ``immunosuppression``: fraction of the alloimmune response suppressed by treatment, [0, 1].
- ``injury_organ``: organ with an injury that attracts cells (``None`` for none) (static).
- ``injury_level``: injury severity (0 none; 1 a typical experimental injury), >= 0.
- ``heparin_iu_per_kg``: systemic heparin at infusion (IU/kg), >= 0.
- ``gravity``: ``"1g"`` or ``"micro"`` (spaceflight); kept as the number
  ``microgravity`` (0 or 1), with ``gravity`` read back as a property.
- ``jugular_stasis``: stagnant or retrograde internal jugular venous flow, in [0, 1]
  (0 normal flow, 1 fully stagnant). Found in 6 of 11 ISS crew around flight day 50
  (Marshall-Goebel K et al. 2019 JAMA Netw Open 2:e1915011, doi:10.1001/jamanetworkopen.2019.15011,
  Key Points, V); it raises the procoagulant activity met by doses given through a
  central or jugular line (``Dose(site=...)``).
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._validation import check_choice, check_positive, check_range, concrete
from ..model.layout import ORGANS

IMMUNE_STATUS: tuple[str, ...] = ("competent", "athymic", "nsg")
GRAVITY: tuple[str, ...] = ("1g", "micro")


class Host(eqx.Module):
    """See the module docstring for the arguments."""

    immune_status: str = eqx.field(static=True)
    immunosuppression: Float[Array, ""]
    injury_organ: str | None = eqx.field(static=True)
    injury_level: Float[Array, ""]
    heparin_iu_per_kg: Float[Array, ""]
    #: 1.0 in microgravity, 0.0 at 1 g: a number, so that one compiled solve serves both
    #: (gravity changes only numbers: plasma volume, cardiac output, coagulation, settling).
    microgravity: Float[Array, ""]
    jugular_stasis: Float[Array, ""]

    def __init__(
        self,
        immune_status: str = "competent",
        immunosuppression=0.0,
        injury_organ: str | None = None,
        injury_level=0.0,
        heparin_iu_per_kg=0.0,
        gravity: str = "1g",
        jugular_stasis=0.0,
    ):
        self.immune_status = check_choice("Host.immune_status", immune_status, IMMUNE_STATUS)
        self.immunosuppression = jnp.asarray(immunosuppression, dtype=float)
        self.injury_organ = (
            None if injury_organ is None else check_choice("Host.injury_organ", injury_organ, ORGANS)
        )
        self.injury_level = jnp.asarray(injury_level, dtype=float)
        self.heparin_iu_per_kg = jnp.asarray(heparin_iu_per_kg, dtype=float)
        self.microgravity = jnp.asarray(
            float(check_choice("Host.gravity", gravity, GRAVITY) == "micro"), dtype=float
        )
        self.jugular_stasis = jnp.asarray(jugular_stasis, dtype=float)

    def __check_init__(self):
        check_range("Host.immunosuppression", self.immunosuppression, 0.0, 1.0)
        check_positive("Host.injury_level", self.injury_level, allow_zero=True)
        check_positive("Host.heparin_iu_per_kg", self.heparin_iu_per_kg, allow_zero=True)
        check_range("Host.jugular_stasis", self.jugular_stasis, 0.0, 1.0)
        level = concrete(self.injury_level)
        if self.injury_organ is None and level is not None and float(level) > 0:
            raise ValueError(
                f"Host.injury_level: {float(level)!r} given without injury_organ; name the injured organ "
                f"(one of {', '.join(ORGANS)})"
            )

    @property
    def gravity(self) -> str:
        """``"1g"`` or ``"micro"`` (needs a concrete :attr:`microgravity`)."""
        value = concrete(self.microgravity)
        if value is None:
            raise TypeError("Host.gravity: the host's microgravity flag is traced; read Host.microgravity")
        return GRAVITY[int(float(value) > 0.5)]

    def injury_mask(self) -> Float[Array, " O"]:
        """Injury level of each organ (zero except the injured one)."""
        mask = jnp.zeros(len(ORGANS))
        if self.injury_organ is None:
            return mask
        return mask.at[ORGANS.index(self.injury_organ)].set(self.injury_level)

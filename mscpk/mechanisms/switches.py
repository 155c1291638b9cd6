"""Static on/off switches of the mechanisms."""

from __future__ import annotations

import equinox as eqx


class Mechanisms(eqx.Module):
    """Which mechanisms act (all static).

    **Arguments:**

    - ``efferocytosis``: engulfment of dead cells by phagocytes (saturable), digestion,
      phagocyte migration lung -> liver/spleen and the IL-10 signal. Off: dead cells are
      cleared at the first-order debris clearance rate, as in the core model.
    - ``preparation``: cryo-injury of thawed products raises their death rate, their
      procoagulant activity and their susceptibility to immune lysis. Off: ignored.
    - ``ibmir``: instant blood-mediated inflammatory reaction destroys part of the cells
      entering blood (tissue-factor driven, saturating with dose, lowered by heparin,
      raised after thawing, in microgravity and by jugular venous stasis for central or
      jugular lines), lodges some as lung thrombi and raises plasma TAT.
    - ``alloimmunity``: anti-donor effectors build up over days after exposure to
      mismatched cells, with memory on re-dosing, and kill arrested donor cells.
    - ``injury_homing``: an injured organ captures more of the cells passing through it,
      and its inflammation (resolved by the IL-10 signal of efferocytosis, relapsing
      without it) raises the death rate of donor cells arrested there.

    Environment and delivery effects that are not switches: device settling and
    aggregation (only with ``Dose(device=...)``) and microgravity plasma volume and
    cardiac output (only with ``Host(gravity="micro")``).
    """

    efferocytosis: bool = eqx.field(static=True, default=True)
    preparation: bool = eqx.field(static=True, default=True)
    ibmir: bool = eqx.field(static=True, default=True)
    alloimmunity: bool = eqx.field(static=True, default=True)
    injury_homing: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        for name in ("efferocytosis", "preparation", "ibmir", "alloimmunity", "injury_homing"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"Mechanisms.{name}: expected True or False, got {getattr(self, name)!r}")

    @classmethod
    def none(cls) -> "Mechanisms":
        """The core model: every mechanism off."""
        return cls(
            efferocytosis=False, preparation=False, ibmir=False, alloimmunity=False, injury_homing=False
        )

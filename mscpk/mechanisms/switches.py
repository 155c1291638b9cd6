"""Static on/off switches of the mechanisms."""

from __future__ import annotations

import equinox as eqx


class Mechanisms(eqx.Module):
    """Which mechanisms act (all static).

    **Arguments:**

    - ``efferocytosis``: engulfment of dead cells by phagocytes (saturable), digestion,
      phagocyte migration lung -> liver/spleen and the IL-10 signal. Off: dead cells are
      cleared at the first-order debris clearance rate, as in the core model.
    - ``preparation``: cryo-injury of thawed products raises their death rate. Off: the
      product's preparation state is ignored.
    """

    efferocytosis: bool = eqx.field(static=True, default=True)
    preparation: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        for name in ("efferocytosis", "preparation"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"Mechanisms.{name}: expected True or False, got {getattr(self, name)!r}")

    @classmethod
    def none(cls) -> "Mechanisms":
        """The core model: every mechanism off."""
        return cls(efferocytosis=False, preparation=False)

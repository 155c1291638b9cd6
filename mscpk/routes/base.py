"""Routes of administration: where a dose enters the body.

A route maps a dose onto the compartments it enters, as a distribution over
:data:`~mscpk.model.layout.COMPARTMENTS`. Intravenous cells enter venous blood and
meet the lung first; intra-arterial cells enter the arterial inlet of a named bed and
meet its microvessels first (cells that pass go on to venous blood and the lung).
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._validation import check_choice
from ..model.layout import BLOOD, DEPOTS, N_BLOOD, N_COMPARTMENTS, N_DEPOTS, ORGANS

#: Arterial beds reachable by intra-arterial delivery and the model organ each feeds:
#: brain via the carotid, heart via the coronaries, limb via the femoral artery (its
#: muscle), liver via the hepatic artery, kidney via the renal artery.
IA_TARGETS: dict[str, str] = {
    "brain": "brain",
    "heart": "heart",
    "limb": "muscle",
    "liver": "liver",
    "kidney": "kidneys",
}


class AbstractRoute(eqx.Module):
    """Base class of routes. Subclasses are final."""

    @abc.abstractmethod
    def entry_distribution(self) -> Float[Array, " C"]:
        """Fraction of the dose entering each compartment (sums to 1).

        ``blood`` means venous blood; an organ means that organ's arterial inlet.
        """

    def depot_distribution(self) -> Float[Array, " D"]:
        """Fraction of the dose placed at each local site (:data:`~mscpk.model.layout.DEPOTS`);
        zero for intravascular routes."""
        return jnp.zeros(N_DEPOTS)


class Intravenous(AbstractRoute):
    """Peripheral intravenous injection or infusion: cells enter venous blood."""

    def entry_distribution(self) -> Float[Array, " C"]:
        return jnp.zeros(N_COMPARTMENTS).at[BLOOD].set(1.0)


class IntraArterial(AbstractRoute):
    """Intra-arterial injection or infusion into the arterial bed ``target`` (one of
    :data:`IA_TARGETS`): cells meet that bed's microvessels first (size-dependent first-pass
    arrest there); cells that pass leave with its venous outflow (through the liver for
    portal organs) and reach the lung. Written ``"ia:<target>"`` in a regimen.

    IBMIR is modelled for cells entering venous blood only; arterial delivery skips it.
    """

    target: str = eqx.field(static=True)

    def __init__(self, target: str):
        self.target = check_choice("IntraArterial.target", target, tuple(IA_TARGETS))

    @property
    def organ(self) -> str:
        """The model organ the target bed belongs to."""
        return IA_TARGETS[self.target]

    def entry_distribution(self) -> Float[Array, " C"]:
        return jnp.zeros(N_COMPARTMENTS).at[N_BLOOD + ORGANS.index(self.organ)].set(1.0)


class _Local(AbstractRoute):
    """A route that places cells at one local site (no direct entry into blood)."""

    def entry_distribution(self) -> Float[Array, " C"]:
        return jnp.zeros(N_COMPARTMENTS)

    def depot_distribution(self) -> Float[Array, " D"]:
        return jnp.zeros(N_DEPOTS).at[DEPOTS.index(self.site)].set(1.0)

    @property
    @abc.abstractmethod
    def site(self) -> str:
        """The local site (one of DEPOTS)."""


class Intramuscular(_Local):
    """Intramuscular depot: cells stay in the muscle, die there (dead cells join the
    muscle's phagocyte pools) and leak slowly to blood (then the lung)."""

    @property
    def site(self) -> str:
        return "im"


class Subcutaneous(_Local):
    """Subcutaneous depot (skin compartment); as intramuscular with its own rates."""

    @property
    def site(self) -> str:
        return "sc"


class Intraperitoneal(_Local):
    """Intraperitoneal: cells in the peritoneal cavity (counted in ``rest_of_body``),
    drained slowly by lymphatics to blood."""

    @property
    def site(self) -> str:
        return "ip"


#: Topical vehicles and the site that first holds the cells.
VEHICLES: dict[str, str] = {"suspension": "wound", "hydrogel": "hydrogel", "patch": "patch"}


class Topical(_Local):
    """Topical application on a wound (skin): a cell suspension goes straight onto the
    wound bed; a hydrogel or patch holds the cells (better survival) and releases them
    into the wound bed first-order. Written ``"topical:<vehicle>"``."""

    vehicle: str = eqx.field(static=True)

    def __init__(self, vehicle: str = "suspension"):
        self.vehicle = check_choice("Topical.vehicle", vehicle, tuple(VEHICLES))

    @property
    def site(self) -> str:
        return VEHICLES[self.vehicle]


class Extracorporeal(_Local):
    """Extracorporeal cartridge (dialyser-type, in a blood circuit): cells stay outside
    the body behind a membrane; only their secreted factor reaches blood."""

    @property
    def site(self) -> str:
        return "cartridge"


_ROUTES: dict[str, type[AbstractRoute]] = {
    "iv": Intravenous,
    "ia": IntraArterial,
    "im": Intramuscular,
    "sc": Subcutaneous,
    "ip": Intraperitoneal,
    "topical": Topical,
    "extracorporeal": Extracorporeal,
}
ROUTES: tuple[str, ...] = tuple(_ROUTES)


def route(name: str | AbstractRoute, target: str | None = None) -> AbstractRoute:
    """The route called ``name`` (one of :data:`ROUTES`), or ``name`` if already a route.

    Intra-arterial delivery needs a ``target`` bed, given as ``route("ia", "brain")`` or
    ``route("ia:brain")``; topical delivery takes a vehicle the same way
    (``"topical:hydrogel"``, default suspension).
    """
    if isinstance(name, AbstractRoute):
        return name
    if not isinstance(name, str):
        raise TypeError(f"route: expected a route name or an AbstractRoute, got {type(name).__name__}")
    base, sep, suffix = name.partition(":")
    if sep:
        if target is not None and target != suffix:
            raise ValueError(f"route: target given twice ({name!r} and target={target!r})")
        target = suffix
    base = check_choice("route", base, ROUTES)
    if base == "ia":
        if target is None:
            raise ValueError(
                f"route: intra-arterial delivery needs a target bed, e.g. 'ia:brain'; targets: {', '.join(IA_TARGETS)}"
            )
        return IntraArterial(target)
    if base == "topical":
        return Topical(target or "suspension")
    if target is not None:
        raise ValueError(
            f"route: an option after ':' is only meaningful for 'ia' (target bed) and 'topical' (vehicle), "
            f"got {target!r} for {base!r}"
        )
    return _ROUTES[base]()

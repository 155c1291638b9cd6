"""Routes of administration: where a dose enters the body.

A route maps a dose onto the compartments it enters, as a distribution over
:data:`~mscpk.model.layout.COMPARTMENTS`. Intravenous cells enter venous blood and
meet the lung first. Further routes (intra-arterial into a named bed, local depots)
are added as further final subclasses of :class:`AbstractRoute`.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._validation import check_choice
from ..model.layout import BLOOD, N_COMPARTMENTS


class AbstractRoute(eqx.Module):
    """Base class of routes. Subclasses are final."""

    @abc.abstractmethod
    def entry_distribution(self) -> Float[Array, " C"]:
        """Fraction of the dose entering each compartment (sums to 1).

        ``blood`` means venous blood; an organ means that organ's arterial inlet.
        """


class Intravenous(AbstractRoute):
    """Peripheral intravenous injection or infusion: cells enter venous blood."""

    def entry_distribution(self) -> Float[Array, " C"]:
        return jnp.zeros(N_COMPARTMENTS).at[BLOOD].set(1.0)


_ROUTES: dict[str, type[AbstractRoute]] = {"iv": Intravenous}
ROUTES: tuple[str, ...] = tuple(_ROUTES)


def route(name: str | AbstractRoute) -> AbstractRoute:
    """The route called ``name`` (one of :data:`ROUTES`), or ``name`` if already a route."""
    if isinstance(name, AbstractRoute):
        return name
    return _ROUTES[check_choice("route", name, ROUTES)]()

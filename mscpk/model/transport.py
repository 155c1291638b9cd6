r"""Blood-flow transport and size-dependent first-pass arrest of cells.

**Circulation.** Venous blood is pumped through the lung into arterial blood, which
supplies every systemic organ with a fraction :math:`q_i` of cardiac output :math:`Q`
(the liver's own share is the hepatic artery). Outflow of gut and spleen joins the
portal vein and reaches the liver before venous blood; outflow of the lung goes to
arterial blood; every other organ drains into venous blood. Transit through an
organ's microvessels takes seconds, so an organ is represented only by the cells it
*holds*: of the cells entering it a fraction :math:`E_i` is arrested and the rest leave
at once with its outflow (first-pass extraction; Wang et al. 2016, Sci Rep 6:22293,
doi:10.1038/srep22293, model per-organ arrest of circulating MSCs in the same spirit).

**Size-dependent arrest.** A cell of diameter :math:`d` is stopped when it meets a
microvessel segment it cannot pass. Segment diameters in a capillary bed are broadly
distributed (Doerschuk et al. 1993, J Appl Physiol 74:3040, doi:10.1152/jappl.1993.74.6.3040:
61% of human pulmonary capillary segments are narrower than a neutrophil) and a transit
crosses 40-100 segments (Huang, Doerschuk & Kamm 2001, J Appl Physiol 90:545). We take
the probability of arrest per pass as a log-logistic function of cell diameter,

.. math::

    E^{\mathrm{size}}_i(d) = \frac{1}{1 + (\phi\, d^{\mathrm{cap}}_i / d)^{h}},

with the bed's capillary diameter :math:`d^{\mathrm{cap}}_i`, the ratio :math:`\phi`
(``critical_diameter_ratio``) at which half of the cells pass, and steepness :math:`h`
(``arrest_steepness``): 0 for vanishing cells, 1/2 at :math:`d = \phi d^{\mathrm{cap}}`,
tending to 1 for large cells; monotone, smooth and differentiable. Size-independent
adhesive capture :math:`a_i` (sinusoids of liver, spleen, marrow) combines as an
independent chance, :math:`E_i = 1 - (1 - E^{\mathrm{size}}_i)(1 - a_i)`.

**Quasi-steady circulation.** Blood circulates in seconds (mouse) to a minute (human)
while arrested cells live for hours to days. Circulating viable cells are therefore
treated as quasi-steady: a cell entering venous blood makes circulations of mean
duration :math:`V_b/Q`, on each of which it is arrested in the lung with probability
:math:`E_L` or, having passed the lung, in systemic organ :math:`i` with probability
:math:`f_i` (arterial fate: :math:`q_i E_i`, plus for the liver the portal share
:math:`E_{liver} \sum_{p\in\{gut,spleen\}} q_p (1-E_p)`). Per circulation it is
arrested in organ :math:`i` with probability :math:`a_i = E_L[i=lung] + (1-E_L) f_i`,
so it leaves blood at rate :math:`k_{out} = (Q/V_b)\sum_i a_i`, while dying in blood at
:math:`k_{bd}` (and, for label, leaking at :math:`k_\ell`). Its eventual fate is the
competing-risk partition :math:`\varphi_i = (Q/V_b) a_i / (k_{out} + k_{bd})`, dead in
blood :math:`k_{bd}/(k_{out}+k_{bd})`, and the quasi-steady number in blood is
(flux into blood)/:math:`(k_{out}+k_{bd})`. This is exact once times exceed the blood
residence time :math:`1/(k_{out}+k_{bd})` (seconds for MSCs; reported by
:meth:`mscpk.Model.blood_residence_h`) and it removes the stiffness that blood
circulation would otherwise give the ODE.

Cells released from an organ re-enter blood where its outflow goes: released lung
cells start in arterial blood (one systemic pass before the pool), released gut and
spleen cells meet the liver first, all others join venous blood.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, Float

from .layout import N_ORGANS, ORGANS

LUNG = ORGANS.index("lung")
LIVER = ORGANS.index("liver")
#: Organs whose venous outflow is the portal vein (to the liver).
PORTAL_ORGANS: tuple[str, ...] = ("gut", "spleen")
_PORTAL = jnp.array([o in PORTAL_ORGANS for o in ORGANS], dtype=float)
_E_LUNG = jnp.eye(N_ORGANS)[LUNG]
_E_LIVER = jnp.eye(N_ORGANS)[LIVER]


def size_extraction(
    diameter_um: Float[Array, " S"],
    capillary_diameter_um: Float[Array, " O"],
    critical_diameter_ratio: Float[Array, ""],
    arrest_steepness: Float[Array, ""],
) -> Float[Array, "S O"]:
    """Per-pass arrest probability from size alone, for each class and organ."""
    log_ratio = (
        jnp.log(critical_diameter_ratio * capillary_diameter_um)[None, :] - jnp.log(diameter_um)[:, None]
    )
    return 1.0 / (1.0 + jnp.exp(arrest_steepness * log_ratio))


def first_pass_extraction(
    size_part: Float[Array, "S O"], adhesion_extraction: Float[Array, " O"]
) -> Float[Array, "S O"]:
    """Combine size arrest and adhesive capture as independent chances."""
    return 1.0 - (1.0 - size_part) * (1.0 - adhesion_extraction)[None, :]


def arterial_fate(extraction: Float[Array, "S O"], supply: Float[Array, " O"]) -> Float[Array, "S O"]:
    """Probability that a cell in arterial blood is arrested in each organ on this pass."""
    e_liver = extraction[:, LIVER]
    portal_escape = jnp.sum(supply * _PORTAL * (1.0 - extraction), axis=1)  # (S,)
    return supply[None, :] * extraction + (e_liver * portal_escape)[:, None] * _E_LIVER[None, :]


class Circulation(NamedTuple):
    """Fates of cells entering blood (all per diameter class ``S``).

    - ``out_rate``: :math:`k_{out}` (1/h), arrest rate of cells in blood.
    - ``pool``: :math:`\\varphi`, ``(S, O)``: eventual organ of a cell entering venous blood.
    - ``pool_dead``: ``(S,)``: probability it dies in blood instead.
    - ``release``: ``(S, O, O)``: column ``j`` is the eventual organ of a cell released from
      organ ``j``; ``release_dead`` ``(S, O)``: probability it dies in blood.
    - ``release_to_pool``: ``(S, O)``: probability a cell released from organ ``j`` reaches
      venous blood (and so is counted among circulating cells).
    - ``lung_release_arrest``: ``(S, O)``: probability that a cell released from the lung
      is arrested in each organ on its first systemic pass (before the pool);
      ``portal_release_arrest``: ``(S,)``: that a cell released from gut or spleen is
      arrested in the liver first. With ``pool`` and ``release_to_pool`` they make up
      ``release`` (:func:`redistribute` applies it without forming it).
    """

    out_rate: Float[Array, " S"]
    pool: Float[Array, "S O"]
    pool_dead: Float[Array, " S"]
    release: Float[Array, "S O O"]
    release_dead: Float[Array, "S O"]
    release_to_pool: Float[Array, "S O"]
    lung_release_arrest: Float[Array, "S O"]
    portal_release_arrest: Float[Array, " S"]


def circulation(
    extraction: Float[Array, "S O"],
    supply: Float[Array, " O"],
    circulation_rate_per_h: Float[Array, ""],
    loss_rate_per_h: Float[Array, ""],
) -> Circulation:
    """Quasi-steady fates of cells in blood (see module docstring).

    **Arguments:**

    - ``extraction``: per-pass arrest probability ``(S, O)``.
    - ``supply``: arterial supply fraction of cardiac output per organ (lung 0).
    - ``circulation_rate_per_h``: :math:`Q/V_b`, circulations per hour.
    - ``loss_rate_per_h``: competing loss in blood (death; for label also leakage).
    """
    fate_art = arterial_fate(extraction, supply)  # (S, O)
    e_lung = extraction[:, LUNG]
    per_circulation = e_lung[:, None] * _E_LUNG[None, :] + (1.0 - e_lung)[:, None] * fate_art
    arrest = circulation_rate_per_h * per_circulation  # (S, O) 1/h
    out_rate = arrest.sum(1)
    total = out_rate + loss_rate_per_h
    pool = arrest / total[:, None]
    pool_dead = loss_rate_per_h / total

    to_pool_art = 1.0 - fate_art.sum(1)  # after one systemic pass
    to_pool_liver = 1.0 - extraction[:, LIVER]
    is_lung = _E_LUNG[None, :]
    is_portal = _PORTAL[None, :]
    other = 1.0 - is_lung - is_portal
    release_to_pool = is_lung * to_pool_art[:, None] + is_portal * to_pool_liver[:, None] + other  # (S, O)
    # Direct arrest before reaching the pool: fate_art for lung releases, liver for portal.
    direct = is_lung[:, None, :] * fate_art[:, :, None] + is_portal[:, None, :] * (
        extraction[:, LIVER][:, None, None] * _E_LIVER[None, :, None]
    )  # (S, O_to, O_from)
    release = direct + pool[:, :, None] * release_to_pool[:, None, :]
    release_dead = pool_dead[:, None] * release_to_pool
    return Circulation(
        out_rate, pool, pool_dead, release, release_dead, release_to_pool, fate_art, extraction[:, LIVER]
    )


def redistribute(c: Circulation, released: Float[Array, "... S O"]) -> Float[Array, "... S O"]:
    """Where released cells are eventually arrested: ``einsum("sij,sj->si", c.release,
    released)`` (batched over leading dimensions) from the factors of ``release`` (a
    lung column, a liver row and a rank-one pool part), in ``O(S O)`` instead of
    ``O(S O^2)`` work and without reading the ``(S, O, O)`` array: on an accelerator the
    right-hand side is memory-bound and this array was most of what it read."""
    to_pool = jnp.sum(c.release_to_pool * released, -1)  # (..., S)
    portal = jnp.sum(released * _PORTAL, -1)
    return (
        c.lung_release_arrest * released[..., LUNG, None]
        + (c.portal_release_arrest * portal)[..., None] * _E_LIVER
        + c.pool * to_pool[..., None]
    )

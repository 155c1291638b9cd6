"""Switchable mechanisms beyond core transport and fate.

:class:`Mechanisms` holds static on/off switches. The state layout always contains
every mechanism's pools, so switching a mechanism off removes its terms from the
right-hand side and recovers the simpler model exactly (its pools stay at zero), while
scenarios with different settings keep the same array shapes and can be batched.

Implemented so far:

- ``efferocytosis``: dead cells are engulfed by phagocytes with per-organ saturable
  capacity (Galleu et al. 2017 Sci Transl Med 9:eaam7828: apoptotic MSCs engulfed by
  phagocytes within 2 h), digested, and lung phagocytes migrate to liver and spleen
  carrying the donor DNA and label they hold (de Witte et al. 2018 Stem Cells 36:602;
  Eggenhofer et al. 2012 Front Immunol 3:297: 51Cr mostly in liver at 24 h while living
  MSCs are found only in lung). Engulfment drives an anti-inflammatory IL-10 signal.
- preparation state (a property of :class:`~mscpk.CellProduct`): freshly thawed cells
  die faster in vivo; culture rescue after thawing removes the injury.
"""

from .switches import Mechanisms as Mechanisms

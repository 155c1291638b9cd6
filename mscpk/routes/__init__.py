"""Routes of administration."""

from .base import IA_TARGETS as IA_TARGETS
from .base import ROUTES as ROUTES
from .base import AbstractRoute as AbstractRoute
from .base import IntraArterial as IntraArterial
from .base import Intravenous as Intravenous
from .base import route as route

"""Routes of administration."""

from .base import IA_TARGETS as IA_TARGETS
from .base import ROUTES as ROUTES
from .base import VEHICLES as VEHICLES
from .base import AbstractRoute as AbstractRoute
from .base import Extracorporeal as Extracorporeal
from .base import IntraArterial as IntraArterial
from .base import Intramuscular as Intramuscular
from .base import Intraperitoneal as Intraperitoneal
from .base import Intravenous as Intravenous
from .base import Subcutaneous as Subcutaneous
from .base import Topical as Topical
from .base import route as route

"""Routes of administration."""

from .base import ROUTES as ROUTES
from .base import AbstractRoute as AbstractRoute
from .base import Intravenous as Intravenous
from .base import route as route

"""The host: immune status, injury, anticoagulation and environment (gravity)."""

from .host import GRAVITY as GRAVITY
from .host import IMMUNE_STATUS as IMMUNE_STATUS
from .host import Host as Host

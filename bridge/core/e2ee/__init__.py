"""The ``org.tribridge.e2ee.v1`` scheme (docs/e2ee.md): pure, pynacl primitives only.

The bridge relays what this produces and never calls it; clients (bridge/client/) do.
"""

from bridge.core.e2ee.errors import Rejected
from bridge.core.e2ee.keys import Device, DeviceCert, IdentityKey
from bridge.core.e2ee.safety import safety_number
from bridge.core.e2ee.session import InboundSession, OutboundSession, message_id
from bridge.core.e2ee.shares import make_keyshare, open_keyshare

ALGORITHM = "org.tribridge.e2ee.v1"
DEVICE_EVENT = "org.tribridge.e2ee.device"
KEYSHARE_EVENT = "org.tribridge.e2ee.keyshare"

__all__ = [
    "ALGORITHM",
    "DEVICE_EVENT",
    "KEYSHARE_EVENT",
    "Device",
    "DeviceCert",
    "IdentityKey",
    "InboundSession",
    "OutboundSession",
    "Rejected",
    "make_keyshare",
    "message_id",
    "open_keyshare",
    "safety_number",
]

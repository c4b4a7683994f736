"""The SQLite state store: schema, numbered migrations, and small typed functions."""

from bridge.store.errors import StoreError
from bridge.store.people import DmRequest, LinkCode
from bridge.store.store import DeliveryStatus, OutboxItem, Store

__all__ = ["DeliveryStatus", "DmRequest", "LinkCode", "OutboxItem", "Store", "StoreError"]

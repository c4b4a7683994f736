"""The SQLite state store: schema, numbered migrations, and small typed functions."""

from bridge.store.errors import StoreError
from bridge.store.store import DeliveryStatus, OutboxItem, Store

__all__ = ["DeliveryStatus", "OutboxItem", "Store", "StoreError"]

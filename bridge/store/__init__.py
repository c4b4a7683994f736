"""The SQLite state store: schema, numbered migrations, and small typed functions."""

from bridge.store.errors import StoreError
from bridge.store.store import OutboxItem, Store

__all__ = ["OutboxItem", "Store", "StoreError"]

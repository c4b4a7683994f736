"""The SQLite state store: schema, numbered migrations, and small typed functions."""

from bridge.store.store import OutboxItem, Store, StoreError

__all__ = ["OutboxItem", "Store", "StoreError"]

"""The store's one error: the database cannot be opened or used as it is."""


class StoreError(Exception):
    """A path, permission, corruption or schema-version problem with the database."""

"""The pure core: every decision of the bridge, with no I/O.

Nothing in this package imports trio, httpx, h11 or sqlite. Events and settings go in, actions
come out; the adapters around it (store, http, matrix, daemon) carry them out.
"""

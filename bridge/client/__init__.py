"""A client that speaks tribridge's end-to-end encryption (docs/e2ee.md), for people, the tests
and the demo. The bridge itself never imports it."""

from bridge.client.e2ee import E2EEClient, Received

__all__ = ["E2EEClient", "Received"]

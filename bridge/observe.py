"""GET /health and GET /metrics: what a monitor or an admin asks a running bridge.

/health answers 200 while every homeserver answers (or has been silent for less than
`unhealthy_after` seconds) and takes the bridge's token, 503 otherwise, with per-network
reachability, a refused token and outbox depth as JSON.
Neither endpoint needs a token, so they belong on loopback or on `[bridge] metrics_listen`.
"""

from __future__ import annotations

from collections.abc import Mapping

from bridge.delivery import DeliveryWorker
from bridge.http.routing import Router
from bridge.http.types import Request, Response, json_response
from bridge.metrics import CONTENT_TYPE, Metrics
from bridge.store import Store


class Observer:
    def __init__(
        self,
        store: Store,
        workers: Mapping[str, DeliveryWorker],
        metrics: Metrics,
        unhealthy_after: float,
    ) -> None:
        self.store = store
        self.workers = workers
        self.metrics = metrics
        self.unhealthy_after = unhealthy_after
        self.router = Router()
        self.router.add("GET", "/health", self.health)
        self.router.add("GET", "/metrics", self.render_metrics)

    async def health(self, request: Request) -> Response:
        depth = self.store.outbox_depth()
        networks = {}
        healthy = True
        for net_id, worker in self.workers.items():
            silent = worker.unreachable_for()
            networks[net_id] = {
                "reachable": worker.reachable,
                "unreachable_seconds": round(silent, 1),
                "outbox": depth.get(net_id, 0),
                # The homeserver refuses the bridge's as_token: nothing goes there until an
                # admin mends the config or the registration, so unhealthy at once.
                "token_refused": worker.token_refused,
            }
            healthy = healthy and silent < self.unhealthy_after and not worker.token_refused
        failure = self.store.write_failure
        healthy = healthy and failure is None
        status = "ok" if healthy else "unhealthy"
        # The store: whether its last write got to disk (a full disk fails every push).
        store = {"writing": failure is None} | ({"error": failure} if failure else {})
        return json_response(200 if healthy else 503,
                             {"status": status, "networks": networks, "store": store})

    def status_line(self) -> str:
        """One line for systemd's STATUS= (what `systemctl status` shows): bridging, or what
        is wrong and how much waits."""
        problems = []
        for net_id, worker in sorted(self.workers.items()):
            if worker.token_refused:
                problems.append(f"{net_id} refuses the bridge's token")
            elif worker.unreachable_since is not None:
                problems.append(f"{net_id} not answering for "
                                f"{worker.unreachable_for() / 60:.0f} min")
        if self.store.write_failure:
            problems.append(f"the store cannot write ({self.store.write_failure})")
        waiting = sum(self.store.outbox_depth().values())
        state = "; ".join(problems) if problems else "bridging"
        return f"{state}; {waiting:,} waiting" if waiting else state

    async def render_metrics(self, request: Request) -> Response:
        depth = self.store.outbox_depth()
        for net_id in self.workers:
            self.metrics.outbox.labels(net_id).set(depth.get(net_id, 0))
        return Response(200, self.metrics.render(), content_type=CONTENT_TYPE)

    async def handle(self, request: Request) -> Response:
        """The whole server for a separate metrics listener."""
        matched = self.router.match(request.method, request.path)
        if isinstance(matched, Response):
            return matched
        handler, _ = matched
        return await handler(request)

"""The wiring: one root nursery holding the server and one delivery worker per network.

Start-up order matters (../shared/notes/synapse.md): the listener must be up before the bot joins
rooms or pings a homeserver, since both make the homeserver call us back. READY=1 goes out once
the store is migrated, the listener is up and each homeserver was pinged (or failed to answer).
"""

from __future__ import annotations

import logging
import signal
import uuid
from contextlib import AsyncExitStack
from pathlib import Path

import trio

from bridge.config import Config, ConfigError, NetworkConfig, load_config
from bridge.core.ghosts import derive_key
from bridge.core.model import Portal
from bridge.delivery import DeliveryWorker
from bridge.http.server import Limits, serve
from bridge.inbound import Inbound
from bridge.matrix.appservice import Appservice
from bridge.matrix.client import Homeserver, HomeserverError, make_http_client
from bridge.notify import Notifier
from bridge.reconcile import Reconciler
from bridge.store import Store

log = logging.getLogger(__name__)

PORTAL_STATE = "org.tribridge.portal"
SETUP_TIMEOUT = 20.0  # seconds one homeserver may take to answer the start-up calls


async def run(
    config: Config,
    notifier: Notifier | None = None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the bridge until cancelled."""
    notifier = notifier or Notifier()
    store = Store(config.bridge.database)
    key = derive_key(config.bridge.secret)
    networks = {net_id: net.network for net_id, net in config.networks.items()}
    portals = store.sync_config_portals(config.portals)
    try:
        async with AsyncExitStack() as stack:
            homeservers: dict[str, Homeserver] = {}
            for net_id, net in config.networks.items():
                http = await stack.enter_async_context(
                    make_http_client(net.homeserver, net.as_token)
                )
                homeservers[net_id] = Homeserver(http, net.network.server_name)
            workers: dict[str, DeliveryWorker] = {}
            inbound = Inbound(store, networks, key, wake=lambda n: workers[n].wake())
            reconciler = Reconciler(store, homeservers, inbound, store.portals)
            for net_id, network in networks.items():
                workers[net_id] = DeliveryWorker(
                    network, homeservers, networks, store, key,
                    wake=lambda n: workers[n].wake(), on_recovered=reconciler.suspect,
                )
            app = Appservice(config.networks, reconciler, store)
            async with trio.open_nursery() as nursery:
                await nursery.start(reconciler.run)
                host, port = config.bridge.listen_host, config.bridge.listen_port
                await nursery.start(serve, host, port, app.handle, Limits())
                log.info("listening on %s:%d for %d networks", host, port, len(networks))
                for worker in workers.values():
                    await nursery.start(worker.run)
                async with trio.open_nursery() as setup:
                    for net_id, net in config.networks.items():
                        setup.start_soon(
                            _setup_network, net, homeservers[net_id], portals, reconciler
                        )
                notifier.send("READY=1", "STATUS=bridging")
                log.info("ready: %d portals", len(portals))
                task_status.started()
                await trio.sleep_forever()
    finally:
        store.close()


async def _setup_network(
    net: NetworkConfig, hs: Homeserver, portals: list[Portal], reconciler: Reconciler
) -> None:
    """Register the bot, join its portal rooms, publish portal ids, take in what was missed
    while we were away, and ping the homeserver so it pushes its backlog now."""
    where = f"{net.network.label} ({net.network.server_name})"
    # Pushes right after a restart are the ones Synapse strands or reorders: distrust them.
    reconciler.suspect(net.id)
    with trio.move_on_after(SETUP_TIMEOUT) as scope:
        try:
            await hs.register(net.network.bot)
        except HomeserverError as exc:
            log.warning("could not register the bot on %s: %s", where, exc)
        for portal in portals:
            room_id = portal.rooms.get(net.id)
            if room_id is None:
                continue
            try:
                await hs.join(room_id)
            except HomeserverError as exc:
                log.warning(
                    "cannot join portal room %s on %s: %s; invite %s to it and the bot "
                    "joins when invited", room_id, where, exc, net.network.bot_user_id,
                )
                continue
            try:
                await hs.put_state(room_id, PORTAL_STATE, "", {"portal_id": portal.portal_id})
            except HomeserverError as exc:
                log.info("portal id not published in %s on %s: %s", room_id, where, exc)
        taken = await reconciler.reconcile_network(net.id)
        if taken:
            log.info("%s: took in %d event(s) from room timelines", where, taken)
        try:
            took = await hs.ping_appservice(net.appservice_id, f"tribridge-start-{uuid.uuid4()}")
            log.info("%s answered the start-up ping (%d ms round trip)", where, took)
        except HomeserverError as exc:
            log.warning("start-up ping of %s failed: %s", where, exc)
    if scope.cancelled_caught:
        log.warning("%s did not finish the start-up calls in %.0f s", where, SETUP_TIMEOUT)


async def run_until_signalled(config_path: Path, config: Config) -> None:
    """Run until SIGTERM or SIGINT; SIGHUP validates the config file again."""
    notifier = Notifier()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(run, config, notifier)
            async for signum in signals:
                if signum == signal.SIGHUP:
                    _check_reload(config_path)
                    continue
                log.info("%s: stopping", signal.Signals(signum).name)
                notifier.send("STOPPING=1")
                nursery.cancel_scope.cancel()
                break
    log.info("stopped")


def _check_reload(config_path: Path) -> None:
    try:
        load_config(config_path)
    except ConfigError as exc:
        log.error("SIGHUP: the config has errors; keeping the running config:")
        for line in exc.lines():
            log.error("  %s", line)
        return
    log.warning("SIGHUP: the config is valid, but live reload is not supported yet: restart "
                "tribridge to apply it")

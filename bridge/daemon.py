"""The wiring: one root nursery holding the server and one delivery worker per network.

Start-up order matters (../shared/notes/synapse.md): the listener must be up before the bot joins
rooms or pings a homeserver, since both make the homeserver call us back. READY=1 goes out once
the store is migrated, the listener is up and each homeserver was pinged (or failed to answer).

Stopping (SIGTERM, SIGINT): STOPPING=1, pushes held for their sends' answers are answered (they
are on disk), the listener closes (a transaction not yet answered is
pushed again by its homeserver later), the workers start nothing new, sends in flight get up to
DRAIN_SECONDS to finish and commit, then everything is cancelled. Reloading (SIGHUP): the whole
file is validated; a broken one changes nothing; a valid one applies its portals and log level,
and names the keys that only a restart applies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import resource
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack
from pathlib import Path

import trio

from bridge.bot import Bot
from bridge.commits import GroupCommit, wait_all_tasks_blocked
from bridge.config import Config, ConfigError, NetworkConfig, load_config
from bridge.core.ghosts import derive_key
from bridge.core.model import Portal
from bridge.core.translate import Rules
from bridge.delivery import DeliveryWorker
from bridge.encryption import check_until_done, refuse_mixed_portals
from bridge.ephemeral import Ephemeral
from bridge.housekeeping import prune_forever
from bridge.http.client import LeanClient
from bridge.http.server import Limits, serve
from bridge.inbound import Inbound
from bridge.matrix.appservice import Appservice
from bridge.matrix.client import Homeserver, HomeserverError, Unreachable, make_http_client
from bridge.metrics import Metrics
from bridge.notify import Notifier
from bridge.observe import Observer
from bridge.pacing import Pacing
from bridge.reconcile import Reconciler
from bridge.store import OutboxItem, Store

log = logging.getLogger(__name__)

PORTAL_STATE = "org.tribridge.portal"
SETUP_TIMEOUT = 20.0  # seconds one homeserver may take to answer the start-up calls
DRAIN_SECONDS = 10.0  # how long sends in flight may take to finish when stopping
# The start-up ping is asked again after a failure to connect (PING_PAUSE s, then twice that).
PING_TRIES = 3
PING_PAUSE = 1.0
# How long pushes held for their sends' answers (bridge/pacing.py) get to be answered at a stop.
STOP_ANSWERS_SECONDS = 0.5


class Bridge:
    """The running bridge's parts, so signals can stop or reload it."""

    def __init__(self, config: Config, notifier: Notifier) -> None:
        self.config = config
        self.notifier = notifier
        self.stop_requested = trio.Event()
        self.reloads: trio.MemoryReceiveChannel[Config]
        self._reload_send, self.reloads = trio.open_memory_channel[Config](1)
        self.inbound: Inbound | None = None
        self._nursery: trio.Nursery | None = None  # the running daemon's, for late checks
        self._rechecking: set[str] = set()  # portals whose encryption check waits for an answer

    def reload_from_bot(self) -> str:
        """`admin reload`: what SIGHUP does, with the outcome as the bot's reply."""
        try:
            new = load_config(self.config.path)
        except ConfigError as exc:
            log.error("admin reload: the config has errors; keeping the running config")
            return "The config has errors; the running config stays:\n" + "\n".join(exc.lines())
        if not self.request_reload(new):
            return "A reload was already waiting; it applies this newest file instead."
        reply = f"Reloading the config: {RELOADED} apply now."
        restart = _needs_restart(self.config, new)
        if restart:
            reply += f"\nChanged, and applied only by a restart: {', '.join(restart)}."
        return reply

    def request_stop(self) -> None:
        self.stop_requested.set()

    def request_reload(self, config: Config) -> bool:
        """Queue `config` to be applied; False if another was waiting (it is replaced: the
        reload applies the newest file read, never an older one)."""
        try:
            self._reload_send.send_nowait(config)
        except trio.WouldBlock:
            with contextlib.suppress(trio.WouldBlock):
                self.reloads.receive_nowait()  # the older one, not applied yet
            self._reload_send.send_nowait(config)
            return False
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        config = self.config
        store = Store(config.bridge.database, config.bridge.durability)
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
                    fast = await stack.enter_async_context(
                        LeanClient(net.homeserver, {"Authorization": f"Bearer {net.as_token}"})
                    )
                    homeservers[net_id] = Homeserver(http, net.network.server_name, fast=fast)
                workers: dict[str, DeliveryWorker] = {}
                metrics = Metrics()

                def wake(
                    network_id: str,
                    rooms: Iterable[str] | Mapping[str, Sequence[OutboxItem] | None] | None = None,
                ) -> bool:
                    """Wake a network's worker (to look at `rooms`, or at every room with
                    actions pending; see DeliveryWorker.wake); True if it was sending already."""
                    return workers[network_id].wake(rooms)

                inbound = Inbound(store, networks, key, wake=wake, rules=_rules(config))
                self.inbound = inbound
                commits = GroupCommit(store)
                pacing = Pacing(ready=lambda n, room: workers[n].may_hold(room),
                                reachable=lambda n: workers[n].reachable)
                reconciler = Reconciler(store, homeservers, inbound, store.portals, metrics,
                                        commits,
                                        unreachable=lambda n: workers[n].noticed_unreachable(),
                                        pacing=pacing)
                bot = Bot(lambda: self.config, homeservers, store, key,
                          reachable=lambda n: workers[n].reachable, reload=self.reload_from_bot,
                          wake=wake, read_room=reconciler.read_soon)
                for net_id, network in networks.items():
                    workers[net_id] = DeliveryWorker(
                        network, homeservers, networks, store, key,
                        wake=wake, on_recovered=reconciler.suspect,
                        metrics=metrics, bot=bot, max_media_bytes=config.bridge.max_media_bytes,
                        pacing=pacing,
                    )
                observer = Observer(store, workers, metrics, config.bridge.unhealthy_after)
                separate = config.bridge.metrics_listen
                public = None if separate else observer.router
                ephemeral = Ephemeral(networks, homeservers, store, key)
                app = Appservice(config.networks, reconciler, store, public, ephemeral.take)
                async with trio.open_nursery() as nursery:
                    await nursery.start(commits.run)
                    await nursery.start(reconciler.run)
                    await nursery.start(ephemeral.run)
                    host, port = config.bridge.listen_host, config.bridge.listen_port
                    server = trio.CancelScope()
                    limits = _connection_limits()
                    # Heads decide first: who has no token is refused before sending a body.
                    listen = functools.partial(serve, admit=app.admit)
                    await nursery.start(_in_scope, server, listen, host, port, app.handle, limits)
                    log.info("listening on %s:%d for %d networks", host, port, len(networks))
                    # A scope of its own (a scope holds one task); stopped with the other.
                    observed = trio.CancelScope()
                    if separate:
                        await nursery.start(
                            _in_scope, observed, serve, *separate, observer.handle, Limits()
                        )
                        log.info("/health and /metrics on %s:%d", *separate)
                    workers_done = await nursery.start(_run_workers, list(workers.values()))
                    self._nursery = nursery
                    await self._setup(homeservers, portals, reconciler)
                    for net in config.networks.values():
                        nursery.start_soon(_catch_up, net, reconciler)
                    nursery.start_soon(_watchdog, self.notifier, store)
                    nursery.start_soon(_status_updates, self.notifier, observer)
                    nursery.start_soon(self._reloader, store, homeservers, reconciler)
                    nursery.start_soon(prune_forever, store, list(networks),
                                       lambda: self.config.bridge.history_days, metrics)
                    self.notifier.send("READY=1", "STATUS=bridging")
                    # Counted from the store: a portal refused by the encryption check is gone.
                    log.info("ready: %d portals", len(store.portals()))
                    task_status.started()
                    await self.stop_requested.wait()
                    # Pushes waiting for their sends are on disk: answered before the listener
                    # closes, a moment at most (bridge/pacing.py).
                    pacing.stop()
                    with trio.move_on_after(STOP_ANSWERS_SECONDS):
                        await wait_all_tasks_blocked()
                    server.cancel()
                    observed.cancel()
                    for worker in workers.values():
                        worker.stop()
                    with trio.move_on_after(DRAIN_SECONDS) as drain:
                        await workers_done.wait()
                    if drain.cancelled_caught:
                        log.warning("sends still in flight after %.0f s: they go again at the "
                                    "next start, with the same transaction ids", DRAIN_SECONDS)
                    nursery.cancel_scope.cancel()
        finally:
            store.close()

    async def _setup(
        self,
        homeservers: Mapping[str, Homeserver],
        portals: list[Portal],
        reconciler: Reconciler,
        *,
        starting: bool = True,
    ) -> None:
        async with trio.open_nursery() as setup:
            for net_id, net in self.config.networks.items():
                setup.start_soon(functools.partial(_setup_network, starting=starting), net,
                                 homeservers[net_id], portals, reconciler)
        # Bounded: what is not checked by then is checked after READY (check_until_done).
        _, unchecked = await refuse_mixed_portals(homeservers, reconciler.store, portals,
                                                  within=SETUP_TIMEOUT)
        if unchecked and self._nursery is not None:
            self._nursery.start_soon(check_until_done, homeservers, reconciler.store, unchecked,
                                     self._rechecking)

    async def _reloader(
        self, store: Store, homeservers: Mapping[str, Homeserver], reconciler: Reconciler
    ) -> None:
        async for new in self.reloads:
            self.notifier.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
            restart = _needs_restart(self.config, new)
            logging.getLogger().setLevel(new.bridge.log_level.upper())
            before = {frozenset(p.rooms.items()) for p in store.portals()}
            portals = store.sync_config_portals(new.portals)
            self.config = _with_reloadable(self.config, new)
            if self.inbound is not None:
                self.inbound.rules = _rules(self.config)
            # Only what the new file changed needs the bot: portals whose rooms are not what
            # they were (their rooms joined if new to it, their encryption checked). A reload
            # is no restart: nothing was missed, so no window of distrust opens, no room is
            # swept, no ping is sent.
            changed = [p for p in portals if frozenset(p.rooms.items()) not in before]
            await self._setup(homeservers, changed, reconciler, starting=False)
            self.notifier.send("READY=1", "STATUS=bridging")
            log.info("reloaded: %d portals, log level %s", len(portals), new.bridge.log_level)
            if restart:
                log.warning("reload: %s changed; restart tribridge to apply", ", ".join(restart))


def _connection_limits() -> Limits:
    """Raise the open-file limit to what the system allows, and fit the connection cap in it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        wanted = 65536 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            log.info("could not raise the open-file limit from %d: %s", soft, exc)
    default = Limits()
    room = max(64, soft - 256)  # leave files for SQLite, clients to homeservers and logs
    if room < default.max_connections:
        log.info("open-file limit %d: at most %d connections at once", soft, room)
        return dataclasses.replace(default, max_connections=room)
    return default


# What a reload applies at once (_with_reloadable), in the bot's words.
RELOADED = ("portals, permissions, the log level, the command prefix, the default country code, "
            "room state mirroring and history_days")


def _needs_restart(old: Config, new: Config) -> list[str]:
    """The keys whose change only a restart applies."""
    changed = []
    for key in ("listen_host", "listen_port", "database", "secret", "durability", "url",
                "max_media_bytes", "log_format", "metrics_listen", "unhealthy_after"):
        if getattr(old.bridge, key) != getattr(new.bridge, key):
            name = {"listen_host": "listen", "listen_port": "listen",
                    "max_media_bytes": "max_media_size"}.get(key, key)
            changed.append("bridge." + name)
    if old.networks != new.networks:
        changed.append("networks")
    return sorted(set(changed))


def _with_reloadable(old: Config, new: Config) -> Config:
    """The running config with what a reload applies (portals, permissions, log level, command
    prefix, default country code, room state mirroring, history kept) taken from `new`."""
    bridge = dataclasses.replace(
        old.bridge,
        log_level=new.bridge.log_level,
        command_prefix=new.bridge.command_prefix,
        default_country_code=new.bridge.default_country_code,
        mirror_room_state=new.bridge.mirror_room_state,
        history_days=new.bridge.history_days,
    )
    return dataclasses.replace(old, bridge=bridge, portals=new.portals,
                               permissions=new.permissions)


def _rules(config: Config) -> Rules:
    return Rules(config.permissions, config.bridge.command_prefix,
                 config.bridge.max_media_bytes, config.bridge.mirror_room_state)


def _ping_advice(exc: HomeserverError, net: NetworkConfig) -> str:
    """What a failed ping's error code says about the setup (the appservice ping of Matrix
    1.7: the homeserver tried to reach us, and says how that went)."""
    advice = {
        "M_URL_NOT_SET": "the registration has no url: generate it again and restart the "
                         "homeserver",
        "M_CONNECTION_FAILED": "the homeserver cannot reach bridge.url (check it, and any "
                               "firewall between them)",
        "M_CONNECTION_TIMEOUT": "the homeserver cannot reach bridge.url in time",
        "M_BAD_STATUS": "the bridge refused the homeserver's call: its registration's "
                        f"hs_token differs from networks.{net.id}'s (generate it again)",
        "M_UNKNOWN_TOKEN": f"the homeserver does not know networks.{net.id}'s as_token "
                           "(generate the registration again and restart the homeserver)",
    }.get(exc.errcode or "")
    return f" ({advice})" if advice else ""


async def _in_scope(
    scope: trio.CancelScope,
    fn: Callable[..., Awaitable[object]],
    *args: object,
    task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run `fn` (which takes task_status) inside `scope`, so it can be stopped on its own."""
    with scope:
        await fn(*args, task_status=task_status)


async def _run_workers(
    workers: list[DeliveryWorker],
    *,
    task_status: trio.TaskStatus[trio.Event] = trio.TASK_STATUS_IGNORED,
) -> None:
    done = trio.Event()
    try:
        async with trio.open_nursery() as nursery:
            for worker in workers:
                await nursery.start(worker.run)
            task_status.started(done)
    finally:
        done.set()


STATUS_EVERY = 30.0  # seconds between looks at what STATUS= should say


async def _status_updates(notifier: Notifier, observer: Observer) -> None:
    """Keep systemd's STATUS= (`systemctl status`) saying what is wrong, when something is."""
    shown = "bridging"
    while True:
        await trio.sleep(STATUS_EVERY)  # a period, not a wait for an event
        try:
            line = observer.status_line()
        except Exception as exc:  # a store that cannot be read: the watchdog says so
            log.debug("no status line: %s", exc)
            continue
        if line != shown or line != "bridging":  # a reload's READY=1 says "bridging" too
            notifier.send(f"STATUS={line}")
            shown = line


async def _watchdog(notifier: Notifier, store: Store) -> None:
    """WATCHDOG=1 at half of $WATCHDOG_USEC, only while the loop runs and the store answers."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not (usec.isascii() and usec.isdigit()) or (pid and pid != str(os.getpid())):
        return
    interval = int(usec) / 2_000_000
    while True:
        try:
            store.conn.execute("SELECT 1 FROM outbox LIMIT 1").fetchall()
        except Exception as exc:  # an unhealthy store: let systemd's watchdog restart us
            log.error("store check failed, not petting the watchdog: %s", exc)
        else:
            notifier.send("WATCHDOG=1")
        await trio.sleep(interval)  # the watchdog period systemd asked for


async def _setup_network(
    net: NetworkConfig, hs: Homeserver, portals: list[Portal], reconciler: Reconciler,
    *, starting: bool = True,
) -> None:
    """Register the bot, join its portal rooms, publish portal ids, take in what was missed
    while we were away, and ping the homeserver so it pushes its backlog now. Not `starting`
    (a reload): join the new portal rooms, nothing else."""
    where = f"{net.network.label} ({net.network.server_name})"
    if starting:
        # Pushes right after a restart are the ones Synapse strands or reorders: distrust them.
        reconciler.suspect(net.id)
    with trio.move_on_after(SETUP_TIMEOUT) as scope:  # registering and joining
        try:
            if starting:
                await hs.register(net.network.bot)
        except HomeserverError as exc:
            log.warning("could not register the bot on %s: %s", where, exc)
            _silent(exc, net, reconciler)
        joined: list[tuple[str, float]] = []  # (room, just before the bot asked to join it)
        try:
            for portal in portals:
                room_id = portal.rooms.get(net.id)
                if room_id is None or reconciler.store.room_position(net.id, room_id) != (
                    None, None
                ):
                    continue  # not on this network, or joined at an earlier start already
                asked = time.time()
                try:
                    await hs.join(room_id)
                except HomeserverError as exc:
                    # The advice fits a refusal; silence or a wrong token are told elsewhere.
                    advice = (f"; invite {net.network.bot_user_id} to it and the bot joins "
                              "when invited") if exc.status in (403, 404) else ""
                    log.warning("cannot join portal room %s on %s: %s%s", room_id, where, exc,
                                advice)
                    _silent(exc, net, reconciler)
                    continue
                joined.append((room_id, asked))
                try:
                    await hs.put_state(room_id, PORTAL_STATE, "",
                                       {"portal_id": portal.portal_id})
                except HomeserverError as exc:
                    log.info("portal id not published in %s on %s: %s", room_id, where, exc)
        finally:
            # Rooms new in the config are watched from the moment the bot is in them: what is
            # said there from now on is not taken as history, even if the bridge stops before
            # it ever reads them (bridge/reconcile.py).
            if joined:
                with reconciler.store.transaction():
                    reconciler.store.rooms_joined(net.id, joined)
    if scope.cancelled_caught:
        # Answered, but many: the rooms not reached join when the bot is invited to them.
        log.warning("%s: the bot did not finish joining portal rooms in %.0f s", where,
                    SETUP_TIMEOUT)
    if not starting:
        return
    # The backlog is pushed now; while the network is suspect (until the catch-up after READY
    # has read every room), each pushed transaction first reads its rooms back to their marks,
    # so order holds in rooms the catch-up has not reached yet. The window is counted again
    # from here: registering and joining can take longer than the window itself, which must
    # cover the pushes the ping sets off. The ping has a deadline of its own: however long the
    # joins took, it is sent (without it Synapse may hold the backlog for minutes).
    failed: HomeserverError | None = None  # the last ping's failure, while asking again
    with trio.move_on_after(SETUP_TIMEOUT) as pinging:
        for attempt in range(1, PING_TRIES + 1):
            reconciler.suspect(net.id)  # counted from the ping that sets the backlog off
            try:
                took = await hs.ping_appservice(net.appservice_id,
                                                f"tribridge-start-{uuid.uuid4()}")
                log.info("%s answered the start-up ping (%d ms round trip)", where, took)
                break
            except HomeserverError as exc:
                if attempt < PING_TRIES and exc.status == 502 and (
                        exc.errcode == "M_CONNECTION_FAILED"):
                    # Synapse failing to reach us right after a restart: seen when a connection
                    # it kept to the process that died is reused ("AlreadyCalled"). Without a
                    # ping that gets through it holds its backlog for its own backoff, minutes.
                    log.info("start-up ping of %s failed (%s); asking again", where, exc)
                    failed = exc
                    await trio.sleep(PING_PAUSE * attempt)
                    continue
                log.warning("start-up ping of %s failed: %s%s", where, exc,
                            _ping_advice(exc, net))
                _silent(exc, net, reconciler)
                break
    if pinging.cancelled_caught and failed is not None:  # out of time while asking again
        log.warning("start-up ping of %s failed: %s%s", where, failed, _ping_advice(failed, net))
    elif pinging.cancelled_caught:
        log.warning("%s did not answer the start-up ping in %.0f s", where, SETUP_TIMEOUT)
        reconciler.unreachable(net.id)


def _silent(exc: HomeserverError, net: NetworkConfig, reconciler: Reconciler) -> None:
    """A start-up call found the homeserver not answering: /health counts the silence from now
    (not from the first send that fails), and the probe watches for its return."""
    if isinstance(exc, Unreachable):
        reconciler.unreachable(net.id)


async def _catch_up(net: NetworkConfig, reconciler: Reconciler) -> None:
    """Read every portal room of `net` back to its mark, after READY: with thousands of
    portals that is thousands of reads, which must not hold the start (or pushes) back."""
    taken = await reconciler.catch_up(net.id)
    if taken:
        log.info("%s: took in %d event(s) from room timelines", net.network.label, taken)


async def run(
    config: Config,
    notifier: Notifier | None = None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the bridge until cancelled (the demo's entry point)."""
    await Bridge(config, notifier or Notifier()).run(task_status=task_status)


async def run_until_signalled(config_path: Path, config: Config) -> None:
    """Run until SIGTERM or SIGINT; SIGHUP reloads the config file."""
    bridge = Bridge(config, Notifier())
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            ready = trio.Event()

            async def start() -> None:
                await nursery.start(bridge.run)
                ready.set()

            # Signals are heard from the first moment, not from READY on: a start held up by a
            # slow homeserver (up to a minute) must still stop when systemd asks.
            nursery.start_soon(start)
            async for signum in signals:
                if signum == signal.SIGHUP:
                    new = _load_for_reload(config_path)
                    if new is not None:
                        bridge.request_reload(new)  # applied once started
                    continue
                log.info("%s: stopping", signal.Signals(signum).name)
                bridge.notifier.send("STOPPING=1")
                if ready.is_set():
                    bridge.request_stop()  # in-flight sends get their time to finish
                else:
                    # Still starting: nothing was acknowledged that is not on disk (a push is
                    # answered only after its commit), so the start is simply given up.
                    nursery.cancel_scope.cancel()
                break
    log.info("stopped")


def _load_for_reload(config_path: Path) -> Config | None:
    try:
        return load_config(config_path)
    except ConfigError as exc:
        log.error("SIGHUP: the config has errors; keeping the running config:")
        for line in exc.lines():
            log.error("  %s", line)
        return None

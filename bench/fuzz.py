"""bench/fuzz.py: a million inputs through the transaction parser and translation.

The pipeline is what the daemon does with a pushed body before SQLite: parse_transaction (parses
or raises InputError, nothing else), then core.translate on every event (never raises). Any other
exception is a crash. Uses atheris (coverage-guided libFuzzer) when it is installed
(`.venv/bin/pip install atheris`): libFuzzer then prints its own statistics and exits 0, or stops
at the first crash with the input and a traceback. Without atheris, hypothesis at scale, which
prints the count. Either way, exit status 0 means no crash.

Run it: `.venv/bin/python bench/fuzz.py --runs 1000000`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SEEDS = [
    {"events": [{"type": "m.room.message", "sender": "@+15551234567:wa.x", "room_id": "!a:wa.x",
                 "event_id": "$1", "content": {"msgtype": "m.text", "body": "hi @+1555:wa.x",
                 "format": "org.matrix.custom.html",
                 "formatted_body": "<a href='https://matrix.to/#/%40a%3Awa.x'>a</a>"}}]},
    {"events": [{"type": "m.room.member", "sender": "@a:wa.x", "room_id": "!a:wa.x",
                 "event_id": "$2", "state_key": "@tribridge:wa.x",
                 "content": {"membership": "invite", "displayname": "A"}}]},
    {"events": [], "ephemeral": [{"type": "m.typing"}]},
]
TOKENS = ["events", "type", "sender", "room_id", "event_id", "state_key", "content", "msgtype",
          "body", "format", "formatted_body", "membership", "displayname", "m.room.message",
          "m.room.member", "m.text", "m.emote", "m.notice", "join", "invite",
          "@tribridge:wa.x", "@_tb_ig_", "!a:wa.x", "org.matrix.custom.html", "=40", "%40"]


def build_pipeline():  # type: ignore[no-untyped-def]
    from bridge.core.ghosts import derive_key
    from bridge.core.model import Network, Portal
    from bridge.core.translate import translate
    from bridge.matrix.appservice import InputError, parse_transaction

    key = derive_key(b"f" * 32)
    nets = {"wa": Network("wa", "WhatsApp", "wa.x", "phone", "tribridge", "_tb_", False),
            "ig": Network("ig", "Instagram", "ig.x", "handle", "tribridge", "_tb_", True)}
    portal = Portal("p", {"wa": "!a:wa.x", "ig": "!b:ig.x"})

    def pipeline(body: bytes) -> None:
        try:
            events = parse_transaction(body)
        except InputError:
            return
        for event in events:
            if isinstance(event, dict):
                room = portal if event.get("room_id") == "!a:wa.x" else None
                translate(event, nets["wa"], nets, room, key)

    return pipeline


def with_atheris(runs: int) -> tuple[int, str]:
    import atheris

    with atheris.instrument_imports():
        pipeline = build_pipeline()
    corpus = Path(tempfile.mkdtemp(prefix="tribridge-fuzz-"))
    for i, seed in enumerate(SEEDS):
        (corpus / f"seed{i}").write_text(json.dumps(seed))
    dictionary = corpus.parent / (corpus.name + ".dict")
    dictionary.write_text("".join(f"{json.dumps(t)}\n" for t in TOKENS))
    atheris.Setup(
        [sys.argv[0], f"-runs={runs}", f"-dict={dictionary}", "-max_len=4096",
         "-print_final_stats=1", str(corpus)],
        pipeline,
    )
    atheris.Fuzz()  # exits the process: on a crash with the input, else after -runs inputs
    return runs, "atheris"


def with_hypothesis(runs: int) -> tuple[int, str]:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    pipeline = build_pipeline()
    count = 0
    values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                          lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.sampled_from(TOKENS) | st.text(max_size=5),
                                            inner, max_size=4), max_leaves=12)

    @settings(max_examples=runs, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(st.binary(max_size=200) | values.map(lambda v: json.dumps({"events": [v]}).encode()))
    def run(body: bytes) -> None:
        nonlocal count
        count += 1
        pipeline(body)

    run()
    return count, "hypothesis"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    args = parser.parse_args()
    started = time.monotonic()
    try:
        import atheris  # noqa: F401
    except ImportError:
        count, engine = with_hypothesis(args.runs)
    else:
        count, engine = with_atheris(args.runs)
    took = time.monotonic() - started
    print(f"{engine}: {count} inputs through parse_transaction + translate in {took:.0f} s; "
          f"crashes: 0")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Logs never show a token, and show no phone number or email at INFO and above."""

from __future__ import annotations

import json
import logging

import pytest

from bridge.logs import Redact, make_formatter, mask_private

TOKEN = "hs_secret_token_0123456789"


def record(level: int, msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("bridge.test", level, __file__, 1, msg, args, None)


def formatted(level: int, msg: str, *args: object, log_format: str = "text") -> str:
    rec = record(level, msg, *args)
    assert Redact([TOKEN]).filter(rec)
    return make_formatter(log_format).format(rec)


def test_tokens_are_masked_at_every_level() -> None:
    for level in (logging.DEBUG, logging.INFO, logging.ERROR):
        out = formatted(level, "auth failed with %s", TOKEN)
        assert TOKEN not in out and "<redacted>" in out


def test_phone_numbers_and_emails_are_masked_at_info_and_above() -> None:
    msg = "from %s and %s and %s"
    args = ("@+15551234567:wa.localhost", "carol@example.com", "@carol=40example.com:fbm.x")
    out = formatted(logging.WARNING, msg, *args)
    assert "5551234567" not in out and "example.com" not in out
    assert "@<phone>:wa.localhost" in out and "@<email>:fbm.x" in out
    debug = formatted(logging.DEBUG, msg, *args)
    assert "+15551234567" in debug  # an admin debugging a delivery may see ids at debug


def test_exceptions_are_masked_too() -> None:
    try:
        raise RuntimeError(f"user @+15551234567:wa rejected token {TOKEN}")
    except RuntimeError:
        rec = logging.LogRecord("b", logging.ERROR, __file__, 1, "boom", None, __import__(
            "sys").exc_info())
    Redact([TOKEN]).filter(rec)
    out = make_formatter("text").format(rec)
    assert TOKEN not in out and "5551234567" not in out


def test_escaped_and_non_ascii_addresses_are_masked_too() -> None:
    for text, gone in (
        ("GET /profile/%40%2B15551234567%3Awa.localhost", "5551234567"),
        ("user_id=%2b15551234567", "5551234567"),
        ("alice%40example.com wrote", "example.com"),
        ("jos\u00e9@example.com wrote", "example.com"),
        ("bob@ex\u00e4mple.de wrote", "mple.de"),
        ("chri\u017f@example.com wrote", "example.com"),
        ("GET /profile/%40alice%3D40example.com%3Afbm.localhost", "example.com"),
        ("@jos=c3=a9=40ex=c3=a4mple.com:fbm.localhost", "mple.com"),
    ):
        out = mask_private(text)
        assert gone not in out and ("<phone>" in out or "<email>" in out), text


def test_room_and_event_ids_and_plain_numbers_survive() -> None:
    text = "room !Kq3xA34:wa.localhost event $Ab+Cd12 at 2026-11-26 took 1234567 us"
    assert mask_private(text) == text


def test_journald_gets_priority_prefixes_and_no_timestamp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    assert formatted(logging.WARNING, "careful") == "<4>bridge.test: careful"
    assert formatted(logging.INFO, "fine") == "<6>bridge.test: fine"


def test_journald_gets_the_priority_on_every_line_of_a_traceback(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    # journalctl -p err must show the cause (the traceback) with the error.
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    try:
        raise OSError("database or disk is full")
    except OSError:
        rec = logging.LogRecord("bridge.test", logging.ERROR, __file__, 1, "commit failed", None,
                                __import__("sys").exc_info())
    lines = make_formatter("text").format(rec).splitlines()
    assert len(lines) > 2 and all(line.startswith("<3>") for line in lines), lines
    assert lines[-1] == "<3>OSError: database or disk is full"


def test_json_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    entry = json.loads(formatted(logging.INFO, "hello %s", "carol@example.com", log_format="json"))
    assert entry["level"] == "info" and entry["logger"] == "bridge.test"
    assert entry["message"] == "hello <email>"

"""Media messages as they cross: which fields are kept, and the files they point at.

A file is named by an ``mxc://server/media-id`` URI. The bridge only ever takes the two parts of
that URI and asks its own configured homeserver for the file (bridge/media.py): a URL in event
content is never fetched, so a message cannot make the bridge request an address of its
choosing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MEDIA_MSGTYPES = frozenset({"m.image", "m.file", "m.audio", "m.video"})
STICKER = "m.sticker"
DEFAULT_MAX_BYTES = 50 * 1024 * 1024

# The spec's server name (host or IP literal, optional port) and media id grammar.
_MXC = re.compile(r"mxc://([A-Za-z0-9.\-]+(?::[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?)"
                  r"/([A-Za-z0-9_\-]{1,255})")
_INT_INFO = ("size", "w", "h", "duration")
BLURHASH = "xyz.amorgan.blurhash"
VOICE = "org.matrix.msc3245.voice"  # marks a voice message (clients show a voice bubble)
AUDIO = "org.matrix.msc1767.audio"  # its duration (ms) and waveform


def parse_mxc(uri: object) -> tuple[str, str] | None:
    """(server name, media id) of a well-formed mxc URI, else None."""
    if not isinstance(uri, str):
        return None
    match = _MXC.fullmatch(uri)
    if match is None or match.group(1).startswith(".") or ".." in match.group(1):
        return None  # "mxc://../x" would become a path one level up, to another endpoint
    return match.group(1), match.group(2)


def _info(info: object, *, thumbnail: bool = True) -> dict[str, Any]:
    """The parts of a file's `info` that cross: type, size, dimensions, duration, thumbnail."""
    if not isinstance(info, Mapping):
        return {}
    out: dict[str, Any] = {}
    if isinstance(info.get("mimetype"), str) and len(info["mimetype"]) <= 255:
        out["mimetype"] = info["mimetype"]
    for name in _INT_INFO:
        value = info.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            out[name] = value
    blurhash = info.get(BLURHASH)
    if isinstance(blurhash, str) and len(blurhash) <= 128:  # the blurred preview clients draw
        out[BLURHASH] = blurhash
    if thumbnail and parse_mxc(info.get("thumbnail_url")) is not None:
        out["thumbnail_url"] = info["thumbnail_url"]
        thumb = _info(info.get("thumbnail_info"), thumbnail=False)
        if thumb:
            out["thumbnail_info"] = thumb
    return out


def media_content(content: Mapping[str, Any], sticker: bool = False) -> dict[str, Any] | None:
    """A file, image, audio, video or sticker as it crosses (its mxc URIs still the source's;
    delivery swaps in the target's copies), or None if it is not one we can carry."""
    msgtype = content.get("msgtype")
    body = content.get("body")
    if not isinstance(body, str) or parse_mxc(content.get("url")) is None:
        return None
    if not sticker and msgtype not in MEDIA_MSGTYPES:
        return None
    out: dict[str, Any] = {"body": body, "url": content["url"]}
    if not sticker:
        out["msgtype"] = msgtype
    filename = content.get("filename")
    if isinstance(filename, str) and filename:
        out["filename"] = filename[:255]
    info = _info(content.get("info"))
    if info:
        out["info"] = info
    if msgtype == "m.audio":
        if isinstance(content.get(VOICE), Mapping):
            out[VOICE] = {}
        audio = _audio(content.get(AUDIO))
        if audio:
            out[AUDIO] = audio
    return out


def _audio(audio: object) -> dict[str, Any]:
    """A voice message's duration and waveform (up to 1,000 levels of 0-1024), as clients
    draw it."""
    if not isinstance(audio, Mapping):
        return {}
    out: dict[str, Any] = {}
    duration = audio.get("duration")
    if isinstance(duration, int) and not isinstance(duration, bool) and duration >= 0:
        out["duration"] = duration
    wave = audio.get("waveform")
    if isinstance(wave, list) and len(wave) <= 1000 and all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 1024 for v in wave):
        out["waveform"] = wave
    return out


def media_uris(content: Mapping[str, Any]) -> list[str]:
    """The mxc URIs of a crossing message's files: the file, then its thumbnail."""
    found = [content["url"]] if parse_mxc(content.get("url")) else []
    info = content.get("info")
    if isinstance(info, Mapping) and parse_mxc(info.get("thumbnail_url")):
        found.append(info["thumbnail_url"])
    return found


def with_uris(content: Mapping[str, Any], copies: Mapping[str, str]) -> dict[str, Any]:
    """`content` with each file's URI replaced by its copy's (as `copies` maps them)."""
    out = dict(content)
    if out.get("url") in copies:
        out["url"] = copies[out["url"]]
    info = out.get("info")
    if isinstance(info, Mapping):
        info = dict(info)
        thumb = info.get("thumbnail_url")
        if isinstance(thumb, str):
            if thumb in copies:
                info["thumbnail_url"] = copies[thumb]
            else:  # a thumbnail that could not be carried is left out, not left pointing home
                info.pop("thumbnail_url")
                info.pop("thumbnail_info", None)
        out["info"] = info
    return out


def human_size(size: int) -> str:
    if size >= 1024**5:
        # An event may claim any integer; dividing one of 400 digits as a float would raise.
        return "over 1 PB"
    if size >= 1024 * 1024:
        return f"{size / (1024 * 1024):.0f} MB"
    if size >= 1024:
        return f"{size / 1024:.0f} kB"
    return f"{size} bytes"


_KINDS = {"m.image": "An image", "m.video": "A video", "m.audio": "An audio message",
          "m.file": "A file"}


def without_file(content: Mapping[str, Any], too_large: bool) -> dict[str, Any]:
    """A text message in place of a file message whose file could not be carried: what it
    was, its caption (a body that is not just the file's name), and its relations (a reply,
    a thread) kept. The reason is the bridge's, in general words: the source homeserver's
    own error text stays on its network."""
    kind = _KINDS.get(str(content.get("msgtype", "")), "A sticker" if "msgtype" not in content
                      else "A file")
    why = "too large for the bridge to carry" if too_large else "could not be carried here"
    body = content.get("body")
    name = content.get("filename")
    caption = body if isinstance(body, str) and (
        (isinstance(name, str) and body != name) or "msgtype" not in content) else ""
    out: dict[str, Any] = {"msgtype": "m.text",
                           "body": f"({kind} was sent here, {why}.)" + (
                               f" {caption}" if caption else "")}
    for key in ("m.relates_to", "m.mentions"):
        if key in content:
            out[key] = content[key]
    return out

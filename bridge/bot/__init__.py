"""The bot: runs commands and answers the events addressed to it (invites, DM requests
accepted or declined, being removed from a room). Parsing lives in bridge/core/commands.py."""

from bridge.bot.bot import Bot

__all__ = ["Bot"]

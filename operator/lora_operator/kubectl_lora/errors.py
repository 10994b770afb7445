"""The one error type of the plugin: a user-facing failure printed as a single line."""

from __future__ import annotations


class CliError(Exception):
    """A failure the user can act on (unknown job, unreachable storage, bad --set); exit code 1."""

"""Exceptions with messages meant for users: each names the bad input and the fix."""
from __future__ import annotations

import difflib


class BenchError(Exception):
    """Base class for errors shown to the user without a traceback."""


class UnknownName(BenchError, KeyError):
    """A name that no plugin registered; the message lists the closest choices."""

    def __init__(self, kind: str, name: str, choices: list[str]):
        self.kind, self.name, self.choices = kind, name, list(choices)
        close = difflib.get_close_matches(name, self.choices, n=3, cutoff=0.5)
        msg = f"unknown {kind} {name!r}."
        if close:
            msg += " Did you mean: " + ", ".join(close) + "?"
        msg += " Registered: " + (", ".join(self.choices) if self.choices else "(none)")
        super().__init__(msg)

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class DuplicateName(BenchError):
    """Two plugins registered the same name in one registry."""


class ConfigError(BenchError):
    """A matrix file or option that does not make sense; the message names the key/line."""


class WeightsUnavailable(BenchError):
    """Weights that cannot be had here; the message names the alternatives."""


class DataUnavailable(BenchError):
    """A dataset that is not present and cannot be downloaded; the message says what to do."""


class ParityError(BenchError):
    """The exported model disagrees with PyTorch beyond tolerance.

    Attributes:
        result: the comparison (``max_abs_diff``, ``max_rel_diff``, ``atol``, ``rtol``,
            ``ok``), so a failed cell still records how far off the export was.
    """

    def __init__(self, message: str, result: dict | None = None):
        super().__init__(message)
        self.result = result or {}


class EstimatorUnavailable(BenchError):
    """A transferability estimator that cannot score this backbone (e.g. LEEP without the
    weights' source classifier); the message says why and what would make it work."""

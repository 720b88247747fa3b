"""One registry type for every family of named things: models, weights, datasets. Each name is registered once;
an unknown name is one error with the closest names suggested."""

from __future__ import annotations

import difflib
import fnmatch
from typing import Generic, TypeVar

from .errors import ResnetsError

T = TypeVar("T")


class Registry(dict, Generic[T]):
    """name -> entry, in registration order. `what` names the kind in messages ("model", "weights", ...);
    `error` is the exception an unknown name raises, `hint` what its message suggests when no name is close."""

    def __init__(self, what: str, error: type[ResnetsError] = ResnetsError, hint: str = ""):
        super().__init__()
        self.what, self.error, self.hint = what, error, hint

    def add(self, name: str, entry: T) -> T:
        if name in self:
            raise ValueError(f"{self.what} {name!r} is registered twice")
        self[name] = entry
        return entry

    def find(self, name: str) -> T:
        try:
            return self[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self), n=3, cutoff=0.6)
            hint = f"did you mean {', '.join(close)}?" if close else self.hint
            raise self.error(f"unknown {self.what} {name!r}" + (f"; {hint}" if hint else "")) from None

    def names(self, pattern: str = "*") -> list[str]:
        """The names matching a shell-style pattern, in registration order."""
        return [n for n in self if fnmatch.fnmatchcase(n, pattern)]

"""One registry per kind of thing (methods, backbones, data sources, optimizers, ...).

``register`` adds a named entry with a one-line help text; ``get`` looks it up and, for
an unknown name, raises a :class:`SelfSupError` that names the closest valid name and
lists them all.  The ``selfsup list`` command and the command line's choices are
generated from these registries, so each list of choices is written once.
"""
from __future__ import annotations

import difflib
from typing import Any, Callable, Iterable, Iterator

from selfsup.errors import SelfSupError


class Registry:
    """Named entries of one kind, each with a one-line help text and optional facts.

    Example::

        >>> from selfsup.registry import Registry
        >>> COLOURS = Registry("colour")
        >>> @COLOURS.register("red", help="the colour red")
        ... def red():
        ...     return (255, 0, 0)
        >>> COLOURS.names(), COLOURS.help("red"), COLOURS.get("red")()
        (['red'], 'the colour red', (255, 0, 0))
        >>> COLOURS.get("rod")
        Traceback (most recent call last):
            ...
        selfsup.errors.SelfSupError: unknown colour 'rod' (did you mean 'red'?); valid: red
    """

    def __init__(self, kind: str):
        self.kind = kind  # e.g. "method", used in error messages
        self._entries: dict[str, tuple[Any, str]] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def register(self, name: str, obj: Any = None, *, help: str = "", **meta: Any) -> Callable:
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is None.
        ``meta`` are facts about the entry (a backbone's ``modality``), see :meth:`meta`."""

        def add(o: Any) -> Any:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            doc = help or (o.__doc__ or "").strip().split("\n")[0]
            self._entries[name] = (o, doc)
            self._meta[name] = meta
            return o

        return add if obj is None else add(obj)

    def get(self, name: str) -> Any:
        if name not in self._entries:
            raise SelfSupError(unknown(self.kind, name, self.names()))
        return self._entries[name][0]

    def help(self, name: str) -> str:
        self.get(name)
        return self._entries[name][1]

    def meta(self, name: str) -> dict[str, Any]:
        self.get(name)
        return self._meta[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def unknown(kind: str, name: Any, valid: Iterable[str]) -> str:
    """The one-line message for an unknown choice: the closest valid name, then all of them."""
    valid = list(valid)
    close = difflib.get_close_matches(str(name), valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {kind} {name!r}{hint}; valid: {', '.join(valid)}"


def no_option(owner: str, key: str, options: Iterable[str], prefix: str) -> str:
    """The one-line message for an option ``owner`` does not have: the closest one (named
    as the user writes it, ``prefix`` + name), then all of them."""
    options = sorted(options)
    close = difflib.get_close_matches(key, options, n=1)
    hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
    return f"{owner} has no option {key!r}{hint}; its options: {', '.join(options) or 'none'}"

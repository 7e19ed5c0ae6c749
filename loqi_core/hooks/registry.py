"""Named registries, one per extension point: clashes and unknown names are errors that say what to do."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Generic, Iterator, TypeVar

from loqi_core.errors import DuplicateNameError, UnknownNameError

T = TypeVar("T")


@dataclass(frozen=True)
class Provider:
    """The plugin that registered an entry: its entry-point name and distribution."""

    plugin: str
    dist: str
    version: str

    def __str__(self) -> str:
        return f'plugin "{self.plugin}" (dist {self.dist} {self.version})'


def unknown_message(kind: str, name: str, known: list[str]) -> str:
    """``Unknown method "sald". Did you mean "salad"? Installed methods: ... To add one: ...``"""
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = " Did you mean " + ", ".join(f'"{c}"' for c in close) + "?" if close else ""
    installed = ", ".join(sorted(known)) or "none"
    plural = kind + ("es" if kind.endswith("s") else "s")  # losses, not "losss"
    return f'Unknown {kind} "{name}".{hint} Installed {plural}: {installed}. To add one: pip install loqi-plugin-<name>'


class Registry(Generic[T]):
    """Specs of one kind by name, each remembered with the plugin that provided it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, tuple[T, Provider]] = {}

    def add(self, name: str, spec: T, provider: Provider) -> None:
        if name in self._entries:
            other = self._entries[name][1]
            if "loqi-core" in (other.dist, provider.dist):  # a built-in cannot be uninstalled: the other one renames
                mine = provider if other.dist == "loqi-core" else other
                advice = f'loqi-core\'s built-in {self.kind} keeps the name: rename the one of dist {mine.dist}.'
            else:
                advice = f"Uninstall one of the two distributions, or rename the {self.kind} in one of them."
            raise DuplicateNameError(f'{self.kind} "{name}" is registered twice: by {other} and by {provider}. {advice}')
        self._entries[name] = (spec, provider)

    def remove(self, name: str) -> None:
        del self._entries[name]

    def get(self, name: str) -> T:
        try:
            return self._entries[name][0]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def provider(self, name: str) -> Provider:
        self.get(name)
        return self._entries[name][1]

    def unknown_message(self, name: str) -> str:
        return unknown_message(self.kind, name, list(self._entries))

    def names(self) -> list[str]:
        return sorted(self._entries)

    def items(self) -> Iterator[tuple[str, T, Provider]]:
        for name in sorted(self._entries):
            spec, provider = self._entries[name]
            yield name, spec, provider

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

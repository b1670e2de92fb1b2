"""Which versions of a model to serve: the OVMS/TF-Serving version policy.

`{"latest": N}` serves the N highest versions, `{"specific": [1, 3]}` exactly those that exist,
`{"all": {}}` every one. The highest served version answers requests that name none.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VersionPolicy:
    latest: int | None = 1
    specific: tuple[int, ...] = ()
    all: bool = False

    @classmethod
    def parse(cls, value: dict | None) -> VersionPolicy:
        """Read a policy from its JSON form; raises ValueError naming what was expected."""
        if value is None:
            return cls()
        expected = 'expected {"latest": N}, {"specific": [versions]} or {"all": {}}'
        if not isinstance(value, dict) or len(value) != 1:
            raise ValueError(f"version policy {value!r}: {expected}")
        (kind, argument), = value.items()
        if kind == "all":
            return cls(latest=None, all=True)
        if kind == "latest":
            count = argument.get("num_versions") if isinstance(argument, dict) else argument
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                raise ValueError(f"version policy latest: expected a positive integer, "
                                 f"got {argument!r}")
            return cls(latest=count)
        if kind == "specific":
            versions = argument.get("versions") if isinstance(argument, dict) else argument
            if (not isinstance(versions, list) or not versions
                    or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                               for v in versions)):
                raise ValueError(f"version policy specific: expected a list of version "
                                 f"numbers, got {argument!r}")
            return cls(latest=None, specific=tuple(sorted(set(versions))))
        raise ValueError(f"version policy {value!r}: {expected}")

    def select(self, available: set[int]) -> set[int]:
        if self.all:
            return set(available)
        if self.specific:
            return available & set(self.specific)
        return set(sorted(available)[-self.latest:])

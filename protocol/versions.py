"""Protocol versions and the negotiation rule: the client lists the versions it speaks, the
router picks the highest one both speak. New message types need a new version; new trailing
fields and new map keys do not (decoders ignore what they do not know)."""

from __future__ import annotations

from collections.abc import Iterable

from protocol.errors import UnsupportedVersion

__all__ = ["PROTOCOL_VERSION", "SUPPORTED_VERSIONS", "choose_version"]

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS: tuple[int, ...] = (1,)


def choose_version(offered: Iterable[int], supported: Iterable[int] = SUPPORTED_VERSIONS) -> int:
    """The highest version in both lists, or UnsupportedVersion."""
    common = set(offered) & set(supported)
    if not common:
        raise UnsupportedVersion(
            f"no common protocol version (offered {sorted(set(offered))}, "
            f"supported {sorted(set(supported))})"
        )
    return max(common)

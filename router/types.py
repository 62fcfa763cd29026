"""Names the router's layers share: one `Role`, one `Consistency`, and the WAL position that
no replica ever reaches.

`Role` and `Consistency` are the protocol's own enums (protocol/fields.py), not copies: a
request's consistency hint and a reply's route carry the values the router decides with, so
nothing maps one enum onto another at the edge. (protocol/ imports nothing of router/, so they
are defined there and named here.)
"""

from __future__ import annotations

from protocol.fields import Consistency, Role

__all__ = ["UNKNOWN_LSN", "Consistency", "Role"]

# A WAL position no replica will ever have replayed (a session whose write position could not
# be read asks for it): such a session's reads of that shard go to its primary, which is
# always correct. Far below int8's maximum, so comparisons stay plain integers.
UNKNOWN_LSN = 2**62

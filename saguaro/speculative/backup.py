"""Which path served a row's proposal: the cached speculation, or a backup after a miss.

One name for the wire's ``BackupKind`` values, so no reader compares against bare numbers:
the target's stats and round telemetry count JIT and fast backups, its lookahead models leave
fast backups' placeholder tokens out of the acceptance estimate, and spans name the backup
(docs/speculation.md, "Backup policy").
"""

from __future__ import annotations

from enum import IntEnum

from saguaro.v1 import speculation_pb2 as pb


class Backup(IntEnum):
    """A row's ``SpeculateRowReply.backup``, with the wire's values."""

    NONE = pb.BACKUP_KIND_NONE  # the cached speculation for the row's key was returned
    JIT = pb.BACKUP_KIND_JIT  # drafted just in time for this request (real draft samples)
    FAST = pb.BACKUP_KIND_FAST  # placeholder tokens, not samples of any distribution

    @classmethod
    def _missing_(cls, value: object) -> Backup:
        """A value this build does not know (a damaged reply, a newer draft's kind) reads as
        NONE: a reply row's backup only labels and counts it, so it must never fail the round."""
        return cls.NONE

    @property
    def label(self) -> str:
        """The ``ssd.backup`` span attribute's value: ``none``, ``jit`` or ``fast``."""
        return self.name.lower()

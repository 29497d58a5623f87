"""Walk a tenant's chain and report the first entry edited, deleted or reordered."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.engine import Connection

from ._audit_chain import Bind, compute_hash, connection_for, entry_fields, read_head
from ._audit_model import CHECKPOINTS, GENESIS_HASH, LOG, AuditEntry, entry_from_row
from .types import validate_tenant_id

Problem = Literal["edited", "deleted", "reordered"]
# How far from its position an intact entry is looked for before a broken
# link is called an edit rather than a move.
REORDER_WINDOW = 256


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The outcome of ``verify``: true when the chain is intact.

    On failure ``problem`` says what happened and ``seq`` where: the first
    edited entry, the first missing seq, or the position of a moved entry.
    ``last_seq`` / ``last_hash`` describe the verified head; publish them
    elsewhere to anchor the chain against a rewrite from that point on.
    """

    tenant_id: str
    ok: bool
    checked: int
    start_seq: int
    last_seq: int
    last_hash: str
    problem: Problem | None = None
    seq: int | None = None
    detail: str | None = None

    def __bool__(self) -> bool:
        return self.ok


def verify(
    bind: Bind,
    tenant_id: str,
    *,
    anchors: Mapping[int, str] | None = None,
    batch_size: int = 1000,
) -> VerifyResult:
    """Check every entry of ``tenant_id`` after the last purge checkpoint.

    ``bind`` is a Session, Connection or Engine; the log is only read.
    ``anchors`` maps seqs to hashes published earlier (``last_seq`` /
    ``last_hash`` of a past result): an entry that no longer has its
    published hash is reported as edited even if the chain was recomputed.
    """
    validate_tenant_id(tenant_id)
    with connection_for(bind, snapshot=True) as conn:
        return _Walk(conn, tenant_id, dict(anchors or {})).run(batch_size)


class _Walk:
    def __init__(self, conn: Connection, tenant_id: str, anchors: dict[int, str]) -> None:
        self.conn = conn
        self.tenant_id = tenant_id
        self.anchors = anchors
        checkpoint = conn.execute(
            select(CHECKPOINTS.c.seq, CHECKPOINTS.c.hash).where(
                CHECKPOINTS.c.tenant_id == tenant_id
            )
        ).first()
        self.start = int(checkpoint.seq) if checkpoint else 0
        self.start_hash = str(checkpoint.hash) if checkpoint else GENESIS_HASH
        self.seq = self.start
        self.hash = self.start_hash
        self.checked = 0
        if self.anchors.get(self.start, self.start_hash) != self.start_hash:
            self.problem: tuple[Problem, int, str] | None = (
                "edited",
                self.start,
                "the purge checkpoint differs from its anchor",
            )
        else:
            self.problem = None

    def result(
        self, problem: Problem | None = None, seq: int | None = None, detail: str = ""
    ) -> VerifyResult:
        return VerifyResult(
            tenant_id=self.tenant_id,
            ok=problem is None,
            checked=self.checked,
            start_seq=self.start,
            last_seq=self.seq,
            last_hash=self.hash,
            problem=problem,
            seq=seq,
            detail=detail or None,
        )

    def run(self, batch_size: int) -> VerifyResult:
        if self.problem is not None:
            return self.result(*self.problem)
        for entry in self._entries(batch_size):
            expected = self.seq + 1
            if entry.seq != expected:
                return self.result(
                    "deleted", expected, f"entries {expected}..{entry.seq - 1} are missing"
                )
            fields = entry_fields(entry)
            intact = compute_hash(fields) == entry.hash
            linked = entry.prev_hash == self.hash
            if not (intact and linked):
                return self._broken(entry, fields, intact, linked)
            if self.anchors.get(entry.seq, entry.hash) != entry.hash:
                return self.result("edited", entry.seq, "the entry differs from its anchor")
            self.seq, self.hash = entry.seq, entry.hash
            self.checked += 1
        head = read_head(self.conn, self.tenant_id)
        if head is None and self.seq > 0:
            # Writers create the head before their first entry and nothing removes it.
            return self.result(
                "deleted", self.seq + 1, "the chain head is missing: the tail cannot be checked"
            )
        if head is not None and head[0] > self.seq:
            return self.result(
                "deleted", self.seq + 1, f"entries {self.seq + 1}..{head[0]} are missing"
            )
        if head is not None and head[0] == self.seq and head[1] != self.hash:
            return self.result("edited", self.seq, "the chain head does not match this entry")
        beyond = max((seq for seq in self.anchors if seq > self.seq), default=None)
        if beyond is not None:
            return self.result(
                "deleted", self.seq + 1, f"entries {self.seq + 1}..{beyond} are missing (anchored)"
            )
        return self.result()

    def _broken(
        self, entry: AuditEntry, fields: dict[str, Any], intact: bool, linked: bool
    ) -> VerifyResult:
        if linked:
            return self.result("edited", entry.seq, "the entry does not match its hash")
        if intact:
            # The entry is as written, so its predecessor's stored hash changed.
            where = "the purge checkpoint" if self.seq == self.start else f"entry {self.seq}"
            return self.result(
                "edited", self.seq, f"{where} was rewritten; entry {entry.seq} does not link to it"
            )
        low = max(1, entry.seq - REORDER_WINDOW)
        for origin in range(low, entry.seq + REORDER_WINDOW + 1):
            if origin != entry.seq and compute_hash({**fields, "seq": origin}) == entry.hash:
                return self.result(
                    "reordered", entry.seq, f"entry {origin} was found at position {entry.seq}"
                )
        return self.result("edited", entry.seq, "the entry does not match its hash")

    def _entries(self, batch_size: int) -> Iterator[AuditEntry]:
        after = self.start
        while True:
            rows = self.conn.execute(
                select(LOG)
                .where(LOG.c.tenant_id == self.tenant_id, LOG.c.seq > after)
                .order_by(LOG.c.seq)
                .limit(batch_size)
            ).all()
            for row in rows:
                yield entry_from_row(row)
            if len(rows) < batch_size:
                return
            after = int(rows[-1].seq)

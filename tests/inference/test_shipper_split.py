"""Issue 13 item 11 at the shipper: a receiver that refuses a whole batch for one record (an older monitoring, or a
batch over its limits) used to be retried forever with the same batch, jamming every row behind it. The shipper now
splits a refused batch until the refused record is alone, sets that one aside in the outbox (metric, error log) and
delivers the rest. A transient failure (UNAVAILABLE) still retries the batch whole."""
from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from services.inference.outbox import RECORD, Entry, Outbox
from services.inference.shipper import ShipError, Shipper


class RefusingReceiver:
    """Stores batches like monitoring, but refuses a whole batch holding a poison record (as monitoring did)."""

    def __init__(self, code: str = "INVALID_ARGUMENT"):
        self.code = code
        self.stored: list[bytes] = []
        self.calls = 0

    def send(self, rows):
        self.calls += 1
        if any(r.record.startswith(b"poison") for r in rows):
            raise ShipError(self.code, "records[3].customer.customer_id: longer than 128 characters")
        self.stored += [r.record for r in rows]


def fill(outbox: Outbox, good: int, poison_at: tuple[int, ...]) -> list[bytes]:
    rows = [Entry(f"p{i}", (b"poison" if i in poison_at else b"good") + str(i).encode(), RECORD)
            for i in range(good)]
    outbox.append(rows)
    return [row.record for row in rows if not row.record.startswith(b"poison")]


def test_a_refused_batch_is_split_and_only_the_refused_rows_stay_behind(tmp_path):
    outbox = Outbox(tmp_path / "outbox.db")
    expected = fill(outbox, 1000, poison_at=(3, 517, 998))
    receiver = RefusingReceiver()
    shipper = Shipper(outbox, receiver, batch_size=500)
    before = REGISTRY.get_sample_value("churn_inference_outbox_set_aside_total") or 0.0
    while outbox.backlog():
        shipper.ship_once()
    assert sorted(receiver.stored) == sorted(expected) and len(receiver.stored) == 997
    assert [pid for pid, _ in outbox.set_aside_rows()] == ["p3", "p517", "p998"]
    assert "longer than 128" in outbox.set_aside_rows()[0][1]
    assert REGISTRY.get_sample_value("churn_inference_outbox_set_aside_total") - before == 3
    assert receiver.calls < 100  # log2 splitting, not one call per row
    outbox.close()


def test_a_transient_failure_keeps_the_batch_whole(tmp_path):
    outbox = Outbox(tmp_path / "outbox.db")
    fill(outbox, 10, poison_at=(4,))
    shipper = Shipper(outbox, RefusingReceiver(code="UNAVAILABLE"), batch_size=500)
    with pytest.raises(ShipError):
        shipper.ship_once()
    assert outbox.backlog() == 10 and outbox.set_aside_rows() == []
    outbox.close()

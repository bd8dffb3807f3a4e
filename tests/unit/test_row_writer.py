"""RowWriter: a worker's rows reach the shared table only when they change, and the table
then holds exactly what writing every row each time would leave."""

from __future__ import annotations

import random

from xmppgw.net.shared import FIELDS, Row, RowWriter, SharedTable


def values(**kw: float) -> tuple[float, ...]:
    return tuple(Row(**kw))


def test_the_same_values_again_are_not_written() -> None:
    table = SharedTable(2, 3)
    writer = RowWriter(table, 1)
    assert writer.write(0, values(load=2, active=2, total=5))
    assert not writer.write(0, values(load=2, active=2, total=5))
    assert table.row(1, 0) == Row(load=2, active=2, total=5)
    assert table.peers(0, 0).load == 2  # worker 0 sees worker 1's connections


def test_a_changed_field_is_written_and_other_rows_are_left_alone() -> None:
    table = SharedTable(2, 2)
    writer = RowWriter(table, 0)
    writer.write(0, values(load=1, active=1))
    writer.write(1, values(load=3, active=3))
    assert writer.write(0, values(load=1, active=1, failed_until=12.5))
    assert table.row(0, 0).failed_until == 12.5
    assert table.row(0, 1) == Row(load=3, active=3)
    assert table.row(1, 0) == Row()  # another worker's row is never touched


def test_a_fresh_writer_writes_each_row_once_even_if_the_table_was_cleared() -> None:
    """A worker respawned after `clear` starts with an empty writer: its first row always
    reaches the table, also when the values are those its predecessor wrote."""
    table = SharedTable(2, 1)
    RowWriter(table, 1).write(0, values(load=4, active=4))
    table.clear(1)
    fresh = RowWriter(table, 1)
    assert fresh.write(0, values(load=4, active=4))
    assert table.row(1, 0) == Row(load=4, active=4)
    assert table.row(1, 0).probe_failed == 0.0


def test_the_table_matches_writing_every_row_every_time() -> None:
    """Random counter moves over 4 reals: after each round of writes the rows equal the last
    values given for each real, whatever was skipped."""
    rng = random.Random(7)
    table = SharedTable(1, 4)
    writer = RowWriter(table, 0)
    current = [[0.0] * len(FIELDS) for _ in range(4)]
    for _ in range(500):
        real = rng.randrange(4)
        if rng.random() < 0.5:  # half the rounds move one counter of one real
            current[real][rng.randrange(len(FIELDS))] += rng.choice((-1.0, 1.0))
        for i, row in enumerate(current):
            writer.write(i, tuple(row))
        assert [tuple(table.row(0, i)) for i in range(4)] == [tuple(r) for r in current]

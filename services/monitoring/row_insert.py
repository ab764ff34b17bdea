"""Many rows into one table through the driver's executemany (the prediction log's insert, the hot path of
RecordPredictions)."""
from __future__ import annotations

from typing import Sequence

import sqlalchemy as sa


class RowInsert:
    """An INSERT of many rows run by the driver's executemany, as SQLAlchemy Core would bind it but without its work
    per row: compiled once (per set of columns), each column's values through its type's bind processor in one pass,
    a tuple per row where the driver takes positions (SQLite). Rows a conflict skips count 0 in the driver's
    rowcount, which sqlite3 and psycopg both sum over an executemany: it is the number of new rows."""

    def __init__(self, dialect: sa.Dialect, statement, table: sa.Table, names: Sequence[str]):
        compiled = statement.compile(dialect=dialect, column_keys=list(names), for_executemany=True)
        self.sql = compiled.string
        self._positional = compiled.positional
        self._order = list(compiled.positiontup) if compiled.positional else list(names)
        self._processors = [table.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in self._order]

    def parameters(self, columns: dict[str, Sequence], rows: int, **same: object) -> list:
        """The driver's parameters for `rows` rows: `columns` one value per row, `same` one value for every row."""
        bound = []
        for name, process in zip(self._order, self._processors):
            if name in same:
                bound.append([process(same[name]) if process else same[name]] * rows)
            else:
                bound.append(list(map(process, columns[name])) if process else columns[name])
        if self._positional:
            return list(zip(*bound))
        return [dict(zip(self._order, row)) for row in zip(*bound)]

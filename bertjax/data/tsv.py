"""Rows of TSV files by named columns, with errors that name the file and the row.

Columns are header names, or 0-based indices (ints) when the files have no header.
Quotes are literal text (GLUE's TSVs quote freely), so no csv quoting is applied.
Paths and globs may be local or URLs (`gs://...`), read through epath.
"""
from __future__ import annotations

import csv
from typing import Iterator

from bertjax import storage
from bertjax.data.text_files import read_text
from bertjax.errors import UserError


def paths(pattern: str, what: str = 'TSV') -> list[str]:
  found = storage.glob(pattern)
  if not found:
    raise UserError(f'{what} {pattern!r} matches no file; check the path')
  return found


def read_rows(pattern: str, columns: dict[str, str | int], *,
              header: bool) -> Iterator[tuple[str, int, dict[str, str]]]:
  """(path, row number counted from 1 as an editor shows it, {key: cell}) per data row.

  A row too short for a wanted column, or a header without it, is a UserError
  naming the file and the row.
  """
  for path in paths(pattern):
    lines = read_text(path).splitlines()
    rows = csv.reader(lines, delimiter='\t', quoting=csv.QUOTE_NONE)
    indices = _column_indices(columns, next(rows, []) if header else None, path)
    for row_number, row in enumerate(rows, start=2 if header else 1):
      if not row:
        continue
      if len(row) <= max(indices.values()):
        missing = [k for k, c in indices.items() if c >= len(row)]
        raise UserError(f'{path}, row {row_number}: has {len(row)} column(s), no '
                        f'{missing[0]} column; fix the row or the column settings')
      yield path, row_number, {k: row[c] for k, c in indices.items()}


def _column_indices(wanted: dict[str, str | int], header: list[str] | None,
                    path: str) -> dict[str, int]:
  if header is None:
    bad = [f'{k}={v!r}' for k, v in wanted.items() if not isinstance(v, int)]
    if bad:
      raise UserError(f'{path} has no header, so columns must be 0-based indices ({bad[0]})')
    return dict(wanted)
  missing = [f'{k}={v!r}' for k, v in wanted.items() if v not in header]
  if missing:
    raise UserError(f'{path}, row 1 (header): no column {missing[0]}; the columns are '
                    f'{header}')
  return {k: header.index(v) for k, v in wanted.items()}

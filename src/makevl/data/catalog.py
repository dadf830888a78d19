"""Catalog and query-log records, and streaming readers for CSV, JSONL and Parquet.

A catalog row becomes a :class:`Product`; a query-log row a :class:`QueryRecord`.
Readers are generators: a 10-million-row catalog is read row by row and images
stay on disk (a path) or inside the Parquet batch being read (bytes) until a
sample is actually used.

A row that cannot be turned into a record is yielded as a :class:`RowError`
naming the file and line (or Parquet row), so the caller decides whether to
skip-and-count (training) or report (validation). Nothing is dropped silently.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from makevl.config import ColumnMapping

FORMATS = {".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
KEYWORD_SEPARATOR = ";"

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


@dataclass
class Product:
    """One catalog entry. ``image`` is an absolute path, raw bytes, or None."""

    id: str
    title: str
    image: str | bytes | None
    attributes: dict[str, str] = field(default_factory=dict)
    keywords: list[str] = field(default_factory=list)
    source: str = ""  # file the row came from
    line: int = 0  # 1-based line in CSV/JSONL (header is line 1 in CSV), row index in Parquet

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


@dataclass
class QueryRecord:
    """One query-log row: a query and a product it is relevant to (or clicked)."""

    query: str
    product_id: str
    label: float = 1.0
    source: str = ""
    line: int = 0


@dataclass
class RowError:
    """A row that could not be read; ``field`` names the offending column if known."""

    source: str
    line: int
    message: str
    field: str | None = None

    def __str__(self) -> str:
        column = f" [{self.field}]" if self.field else ""
        return f"{self.source}:{self.line}{column}: {self.message}"


class CatalogError(ValueError):
    """A whole file cannot be read (missing, unknown format, missing required column)."""


def detect_format(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise CatalogError(
            f"{path}: unknown file type {suffix!r}; expected one of {sorted(FORMATS)}"
        )
    return FORMATS[suffix]


def iter_rows(path: str | Path) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    """Yield ``(line, row_dict)`` or ``(line, RowError)`` for every data row of a file."""
    path = Path(path)
    fmt = detect_format(path)
    if not path.is_file():
        raise CatalogError(f"file not found: {path}")
    if fmt == "csv":
        yield from _iter_csv(path)
    elif fmt == "jsonl":
        yield from _iter_jsonl(path)
    else:
        yield from _iter_parquet(path)


def _iter_csv(path: Path) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with path.open(newline="", encoding="utf-8", errors="replace") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return
        header = [h.strip() for h in header]
        while True:
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield reader.line_num, RowError(str(path), reader.line_num, f"malformed CSV: {exc}")
                continue
            line = reader.line_num
            if not values or all(not v.strip() for v in values):
                continue  # blank line
            if len(values) != len(header):
                yield line, RowError(
                    str(path),
                    line,
                    f"malformed row: {len(values)} fields, header has {len(header)}",
                )
                continue
            yield line, dict(zip(header, values))


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield line_no, RowError(str(path), line_no, f"malformed JSON: {exc.msg}")
                continue
            if not isinstance(row, dict):
                yield line_no, RowError(str(path), line_no, "malformed row: not a JSON object")
                continue
            yield line_no, row


def _iter_parquet(path: Path, batch_size: int = 1024) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise CatalogError(f"{path}: not a readable Parquet file: {exc}") from exc
    row_index = 0
    for batch in parquet.iter_batches(batch_size=batch_size):
        for row in batch.to_pylist():
            yield row_index, row
            row_index += 1


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):  # NaN from pandas-written files
        return ""
    return str(value)


def row_to_product(
    row: dict[str, Any], columns: ColumnMapping, source: str, line: int, base_dir: Path
) -> Product | RowError:
    """Map a raw row to a :class:`Product`. The title is kept as is (validation judges it)."""
    if columns.id not in row:
        return RowError(source, line, f"missing id column {columns.id!r}", columns.id)
    product_id = _text(row[columns.id]).strip()
    if not product_id:
        return RowError(source, line, "empty product id", columns.id)
    if columns.title not in row:
        return RowError(source, line, f"missing title column {columns.title!r}", columns.title)
    title = _text(row[columns.title])

    image: str | bytes | None = None
    if columns.image is not None:
        raw = row.get(columns.image)
        if isinstance(raw, dict) and "bytes" in raw:  # HF-datasets style {"bytes":..., "path":...}
            raw = raw["bytes"] or raw.get("path")
        if isinstance(raw, (bytes, bytearray, memoryview)):
            image = bytes(raw)
        elif _text(raw).strip():
            ref = Path(_text(raw).strip())
            image = str(ref if ref.is_absolute() else (base_dir / ref))

    keywords: list[str] = []
    if columns.keywords is not None and columns.keywords in row:
        raw_kw = row[columns.keywords]
        if isinstance(raw_kw, (list, tuple)):
            keywords = [_text(k).strip() for k in raw_kw if _text(k).strip()]
        else:
            keywords = [k.strip() for k in _text(raw_kw).split(KEYWORD_SEPARATOR) if k.strip()]

    mapped = {columns.id, columns.title, columns.image, columns.keywords}
    names = columns.attributes if columns.attributes is not None else [
        k for k in row if k not in mapped
    ]
    attributes = {}
    for name in names:
        value = row.get(name)
        if isinstance(value, (bytes, bytearray, dict, list)):
            continue
        text = _text(value).strip()
        if text:
            attributes[name] = text
    return Product(product_id, title, image, attributes, keywords, source, line)


def iter_catalog(
    path: str | Path, columns: ColumnMapping | None = None
) -> Iterator[Product | RowError]:
    """Stream products from a catalog file; image paths resolve against its folder."""
    columns = columns or ColumnMapping()
    path = Path(path)
    base_dir = path.resolve().parent
    for line, row in iter_rows(path):
        if isinstance(row, RowError):
            yield row
        else:
            yield row_to_product(row, columns, str(path), line, base_dir)


def iter_queries(
    path: str | Path, columns: ColumnMapping | None = None
) -> Iterator[QueryRecord | RowError]:
    """Stream query-log rows. A missing label means relevance 1."""
    columns = columns or ColumnMapping()
    path = Path(path)
    for line, row in iter_rows(path):
        if isinstance(row, RowError):
            yield row
            continue
        query = _text(row.get(columns.query)).strip()
        product_id = _text(row.get(columns.product_id)).strip()
        if columns.query not in row:
            yield RowError(str(path), line, f"missing query column {columns.query!r}", columns.query)
            continue
        if not query:
            yield RowError(str(path), line, "empty query", columns.query)
            continue
        if not product_id:
            yield RowError(str(path), line, "empty product id", columns.product_id)
            continue
        label = 1.0
        if columns.label is not None and _text(row.get(columns.label)).strip():
            try:
                label = float(row[columns.label])
            except (TypeError, ValueError):
                yield RowError(
                    str(path), line, f"label {row[columns.label]!r} is not a number", columns.label
                )
                continue
        yield QueryRecord(query, product_id, label, str(path), line)


def write_catalog_csv(products: list[Product], path: str | Path) -> None:
    """Write products in the canonical CSV layout (image paths relative to the file)."""
    path = Path(path)
    base = path.resolve().parent
    attribute_names: list[str] = []
    for product in products:
        for name in product.attributes:
            if name not in attribute_names:
                attribute_names.append(name)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "title", "image", "keywords", *attribute_names])
        for p in products:
            image = ""
            if isinstance(p.image, str):
                try:
                    image = str(Path(p.image).resolve().relative_to(base))
                except ValueError:
                    image = p.image
            writer.writerow(
                [p.id, p.title, image, KEYWORD_SEPARATOR.join(p.keywords)]
                + [p.attributes.get(n, "") for n in attribute_names]
            )

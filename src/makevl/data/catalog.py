"""Catalog and query-log records, and streaming readers for CSV, JSONL and Parquet.

A catalog row becomes a :class:`Product`; a query-log row a :class:`QueryRecord`.
Readers are generators: a 10-million-row catalog is read row by row and images
stay on disk (a path) or inside the Parquet batch being read (bytes) until a
sample is actually used.

A row that cannot be turned into a record is yielded as a :class:`RowError`
naming the file and line (or Parquet row), so the caller decides whether to
skip-and-count (training) or report (validation). Nothing is dropped silently:
an image path outside the allowed folders, or text that is not valid in the
declared encoding, is a :class:`RowError` too. An unclosed CSV quote that
swallowed the rows after it raises :class:`RunawayQuoteError`, because reading
on would silently lose those rows.
"""

from __future__ import annotations

import codecs
import csv
import json
import math
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from makevl.config import ColumnMapping
from makevl.data.images import ImageError, resolve_image_path

FORMATS = {".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
KEYWORD_SEPARATOR = ";"
# A quoted CSV field spanning more lines, or holding more characters, than this is
# an unclosed quote that swallowed the rows after it, not a multi-line title.
MAX_QUOTED_LINES = 20
MAX_QUOTED_CHARS = 10_000
# Bytes the declared encoding cannot decode, as ``errors="surrogateescape"`` keeps them.
UNDECODABLE = re.compile("[\udc80-\udcff]")
ENCODING_HINT = "declare the file's encoding with --encoding or data.encoding"

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
    kind: str = "malformed_row"  # or "image_outside_root", "invalid_encoding"

    def __str__(self) -> str:
        column = f" [{self.field}]" if self.field else ""
        return f"{self.source}:{self.line}{column}: {self.message}"


class CatalogError(ValueError):
    """A whole file cannot be read (missing, unknown format, missing required column)."""


class RunawayQuoteError(CatalogError):
    """An unclosed CSV quote swallowed the rows after it; ``line`` is where it opened."""

    def __init__(self, source: str, line: int, reason: str) -> None:
        self.source = source
        self.line = line
        self.reason = reason
        super().__init__(f"{source}:{line}: {reason}")


def detect_format(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise CatalogError(
            f"{path}: unknown file type {suffix!r}; expected one of {sorted(FORMATS)}"
        )
    return FORMATS[suffix]


def iter_rows(
    path: str | Path, encoding: str = "utf-8"
) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    """Yield ``(line, row_dict)`` or ``(line, RowError)`` for every data row of a file.

    ``line`` is where the row starts. Text files are decoded with ``encoding``;
    a row holding bytes it cannot decode is a ``RowError`` naming the field.
    """
    path = Path(path)
    fmt = detect_format(path)
    if not path.is_file():
        raise CatalogError(f"file not found: {path}")
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise CatalogError(f"{path}: unknown text encoding {encoding!r}") from None
    if fmt == "csv":
        yield from _iter_csv(path, encoding)
    elif fmt == "jsonl":
        yield from _iter_jsonl(path, encoding)
    else:
        yield from _iter_parquet(path)


def _open_text(path: Path, encoding: str, newline: str | None = None) -> Any:
    """Open a text file; bytes ``encoding`` cannot decode survive as :data:`UNDECODABLE`."""
    if codecs.lookup(encoding).name == "utf-8":
        encoding = "utf-8-sig"  # also reads the byte-order mark spreadsheet programs write
    return path.open(encoding=encoding, errors="surrogateescape", newline=newline)


class _Lines:
    """A file's lines for ``csv.reader``; ``exhausted`` says the reader asked past the end."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.exhausted = False

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        try:
            return next(self.handle)
        except StopIteration:
            self.exhausted = True
            raise


def _iter_csv(path: Path, encoding: str) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with _open_text(path, encoding, newline="") as handle:
        lines = _Lines(handle)
        reader = csv.reader(lines, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return
        if _undecodable(header):
            raise CatalogError(f"{path}:1: the header is not valid {encoding}; {ENCODING_HINT}")
        header = [h.strip() for h in header]
        while True:
            line = reader.line_num + 1  # where the next record starts
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield line, RowError(str(path), line, f"malformed CSV: {exc}")
                continue
            if not values or all(not v.strip() for v in values):
                continue  # blank line
            if lines.exhausted:  # the reader hit the end of the file inside a quoted field
                field = _field_name(header, _multiline_field(values))
                if reader.line_num > line:
                    end = f"the end of the file (line {reader.line_num})"
                    raise RunawayQuoteError(str(path), line, _runaway_message(field, end))
                yield line, RowError(str(path), line, "unclosed quote", field)
                continue
            if reader.line_num > line:
                _check_multiline_record(path, header, values, line, reader.line_num)
            if len(values) != len(header):
                yield line, RowError(
                    str(path),
                    line,
                    f"malformed row: {len(values)} fields, header has {len(header)}",
                )
                continue
            bad = _undecodable(values)
            if bad:
                index, byte = bad
                yield line, _encoding_error(path, line, header[index], byte, encoding)
                continue
            yield line, dict(zip(header, values))


def _check_multiline_record(
    path: Path, header: list[str], values: list[str], start: int, end: int
) -> None:
    """Raise :class:`RunawayQuoteError` if a record spanning lines ``start..end`` swallowed rows.

    A real multi-line field (a title with a line break) keeps the header's field
    count and stays short; an unclosed quote runs on over the rows after it.
    """
    longest = max(len(v) for v in values)
    if len(values) != len(header):
        reason = f"line {end}, where the record ends with {len(values)} fields, not {len(header)}"
    elif end - start + 1 > MAX_QUOTED_LINES:
        reason = f"line {end}, more than {MAX_QUOTED_LINES} lines for one field"
    elif longest > MAX_QUOTED_CHARS:
        reason = f"line {end}, {longest} characters in one field"
    else:
        return
    field = _field_name(header, _multiline_field(values))
    raise RunawayQuoteError(str(path), start, _runaway_message(field, reason))


def _runaway_message(field: str, reason: str) -> str:
    return (
        f"unclosed quote in field {field!r}: the quoted text runs on to {reason}, swallowing "
        'the rows in between; close the quote (a quote inside a quoted field is written "")'
    )


def _multiline_field(values: list[str]) -> int:
    return next((i for i, v in enumerate(values) if "\n" in v or "\r" in v), len(values) - 1)


def _field_name(header: list[str], index: int) -> str:
    return header[index] if index < len(header) else f"field {index + 1}"


def _undecodable(values: list[str]) -> tuple[int, int] | None:
    """``(field index, byte)`` of the first byte the declared encoding could not decode."""
    for index, value in enumerate(values):
        match = UNDECODABLE.search(value)
        if match:
            return index, ord(match.group()) - 0xDC00
    return None


def _encoding_error(path: Path, line: int, field: str, byte: int, encoding: str) -> RowError:
    message = f"byte 0x{byte:02x} in field {field!r} is not valid {encoding}; {ENCODING_HINT}"
    return RowError(str(path), line, message, field, kind="invalid_encoding")


def _iter_jsonl(path: Path, encoding: str) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    with _open_text(path, encoding) as handle:
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
            if UNDECODABLE.search(line):
                fields = {key: json.dumps(value, ensure_ascii=False) for key, value in row.items()}
                index, byte = _undecodable([k + v for k, v in fields.items()]) or (0, 0)
                yield line_no, _encoding_error(path, line_no, list(fields)[index], byte, encoding)
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
    row: dict[str, Any], columns: ColumnMapping, source: str, line: int, image_roots: list[str]
) -> Product | RowError:
    """Map a raw row to a :class:`Product`. The title is kept as is (validation judges it).

    An image path must lie inside ``image_roots`` (see :func:`resolve_image_path`);
    relative paths are taken from the first, the catalog's folder.
    """
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
            try:
                image = resolve_image_path(_text(raw).strip(), image_roots)
            except ImageError as exc:
                return RowError(source, line, str(exc), columns.image, kind="image_outside_root")

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
    path: str | Path,
    columns: ColumnMapping | None = None,
    encoding: str = "utf-8",
    image_root: str | Path | None = None,
) -> Iterator[Product | RowError]:
    """Stream products from a catalog file.

    Image paths resolve against the catalog's folder and must stay inside it or
    inside ``image_root``; a row whose image lies elsewhere is a ``RowError``.
    """
    columns = columns or ColumnMapping()
    path = Path(path)
    roots = [os.path.dirname(os.path.realpath(path))]
    if image_root:
        if not Path(image_root).is_dir():
            raise CatalogError(f"image root is not a folder: {image_root}")
        roots.append(os.path.realpath(image_root))
    for line, row in iter_rows(path, encoding):
        if isinstance(row, RowError):
            yield row
        else:
            yield row_to_product(row, columns, str(path), line, roots)


def iter_queries(
    path: str | Path, columns: ColumnMapping | None = None, encoding: str = "utf-8"
) -> Iterator[QueryRecord | RowError]:
    """Stream query-log rows. A missing label means relevance 1."""
    columns = columns or ColumnMapping()
    path = Path(path)
    for line, row in iter_rows(path, encoding):
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

"""``makevl data validate``: is this catalog (and query log) fit to train and serve on?

The checks here are the same ones that guard loading at training time
(:func:`check_product`), so a catalog that validates clean will not surprise a
run. Problems are counted in full; only the first few examples of each kind are
kept, so the report stays readable for a 10-million-row catalog.
"""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from makevl.config import ColumnMapping
from makevl.data.catalog import Product, RowError, RunawayQuoteError, iter_catalog, iter_queries
from makevl.data.images import ImageError, open_image

MAX_EXAMPLES = 20

# Problems that make a product unusable for training (it is skipped and counted).
BAD_PRODUCT_KINDS = ("malformed_row", "empty_title", "missing_image", "unreadable_image")


@dataclass
class Issue:
    kind: str
    where: str  # file:line
    message: str
    product_id: str | None = None
    field: str | None = None


@dataclass
class ValidationReport:
    catalog: str
    queries: str | None = None
    rows: int = 0
    products: int = 0  # rows that became products (bad ones included)
    usable_products: int = 0
    query_rows: int = 0
    usable_query_rows: int = 0
    counts: Counter = field(default_factory=Counter)  # issue kind -> count
    converted_modes: Counter = field(default_factory=Counter)  # e.g. {"L": 3, "CMYK": 1}
    examples: dict[str, list[Issue]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # reasons the data is not usable
    max_bad_fraction: float = 0.05

    def add(self, issue: Issue) -> None:
        self.counts[issue.kind] += 1
        bucket = self.examples.setdefault(issue.kind, [])
        if len(bucket) < MAX_EXAMPLES:
            bucket.append(issue)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {
            "catalog": self.catalog,
            "queries": self.queries,
            "ok": self.ok,
            "rows": self.rows,
            "products": self.products,
            "usable_products": self.usable_products,
            "query_rows": self.query_rows,
            "usable_query_rows": self.usable_query_rows,
            "counts": {k: self.counts.get(k, 0) for k in ALL_KINDS} | dict(self.counts),
            "converted_image_modes": dict(self.converted_modes),
            "examples": {k: [asdict(i) for i in v] for k, v in self.examples.items()},
            "errors": self.errors,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_text(self) -> str:
        lines = [f"catalog: {self.catalog}"]
        if self.queries:
            lines.append(f"queries: {self.queries}")
        lines.append(
            f"rows: {self.rows}  products: {self.products}  usable: {self.usable_products}"
        )
        if self.queries:
            lines.append(f"query rows: {self.query_rows}  usable: {self.usable_query_rows}")
        for kind in ALL_KINDS:
            n = self.counts.get(kind, 0)
            if n:
                lines.append(f"  {kind}: {n}")
                for issue in self.examples.get(kind, [])[:5]:
                    lines.append(f"    {issue.where}: {issue.message}")
                if n > 5:
                    lines.append(f"    ... {n - 5} more (use --json for up to {MAX_EXAMPLES})")
        if self.converted_modes:
            modes = ", ".join(f"{m}: {n}" for m, n in sorted(self.converted_modes.items()))
            lines.append(f"  images converted to RGB from: {modes}")
        lines.append("status: " + ("OK, data is usable" if self.ok else "NOT USABLE"))
        lines += [f"  error: {e}" for e in self.errors]
        return "\n".join(lines)


ALL_KINDS = (
    "runaway_quote",
    "malformed_row",
    "invalid_encoding",
    "image_outside_root",
    "duplicate_id",
    "empty_title",
    "title_too_long",
    "missing_image",
    "unreadable_image",
    "converted_image",
    "empty_fields",
    "unknown_product",
    "malformed_query_row",
)


def check_product(product: Product, max_title_chars: int, decode_image: bool = True) -> list[Issue]:
    """Problems of one product. Kinds in BAD_PRODUCT_KINDS make it unusable."""
    issues = []
    if not product.title.strip():
        issues.append(Issue("empty_title", product.where, "empty title", product.id, "title"))
    elif len(product.title) > max_title_chars:
        issues.append(
            Issue(
                "title_too_long",
                product.where,
                f"title has {len(product.title)} characters (limit {max_title_chars}); "
                "it will be truncated",
                product.id,
                "title",
            )
        )
    if product.image is None:
        issues.append(Issue("missing_image", product.where, "no image reference", product.id, "image"))
    elif decode_image:
        try:
            _, mode = open_image(product.image)
            if mode != "RGB":
                issues.append(
                    Issue("converted_image", product.where, f"image mode {mode} converted to RGB",
                          product.id, "image")
                )
        except ImageError as exc:
            kind = "missing_image" if exc.reason == "missing file" else "unreadable_image"
            issues.append(Issue(kind, product.where, str(exc), product.id, "image"))
    return issues


def validate(
    catalog: str | Path,
    queries: str | Path | None = None,
    columns: ColumnMapping | None = None,
    max_title_chars: int = 512,
    max_bad_fraction: float = 0.05,
    check_images: bool = True,
    workers: int = 4,
    required_fields: list[str] | None = None,
    encoding: str = "utf-8",
    image_root: str | Path | None = None,
) -> ValidationReport:
    """Check a catalog (and optionally a query log) and return a report.

    ``required_fields`` are attribute columns whose emptiness is reported as
    ``empty_fields`` (a warning: the product is still usable). An unclosed
    quote that swallowed rows stops the catalog check and makes the data unusable.
    """
    report = ValidationReport(str(catalog), str(queries) if queries else None,
                              max_bad_fraction=max_bad_fraction)
    seen: dict[str, str] = {}
    bad_ids: set[str] = set()

    def product_stream():
        try:
            for item in iter_catalog(catalog, columns, encoding, image_root):
                report.rows += 1
                if isinstance(item, RowError):
                    report.add(Issue(item.kind, f"{item.source}:{item.line}", item.message,
                                     field=item.field))
                    continue
                yield item
        except RunawayQuoteError as exc:
            report.add(Issue("runaway_quote", f"{exc.source}:{exc.line}", exc.reason))
            report.errors.append(str(exc))

    def check(product: Product) -> tuple[Product, list[Issue]]:
        return product, check_product(product, max_title_chars, check_images)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for product, issues in pool.map(check, product_stream()):
            report.products += 1
            if product.id in seen:
                report.add(Issue("duplicate_id", product.where,
                                 f"id {product.id!r} already used at {seen[product.id]}",
                                 product.id, "id"))
            else:
                seen[product.id] = product.where
            if required_fields:
                empty = [f for f in required_fields if not product.attributes.get(f, "").strip()]
                if empty:
                    issues.append(Issue("empty_fields", product.where,
                                        f"empty field(s): {', '.join(empty)}", product.id,
                                        ",".join(empty)))
            for issue in issues:
                report.add(issue)
                if issue.kind == "converted_image":
                    report.converted_modes[issue.message.split()[2]] += 1
            if any(i.kind in BAD_PRODUCT_KINDS for i in issues):
                bad_ids.add(product.id)
    report.usable_products = sum(1 for pid in seen if pid not in bad_ids)

    if queries is not None:
        for item in iter_queries(queries, columns, encoding):
            report.query_rows += 1
            if isinstance(item, RowError):
                report.add(Issue("malformed_query_row", f"{item.source}:{item.line}", item.message,
                                 field=item.field))
            elif item.product_id not in seen:
                report.add(Issue("unknown_product", f"{item.source}:{item.line}",
                                 f"query {item.query!r} names unknown product {item.product_id!r}",
                                 item.product_id, "product_id"))
            else:
                report.usable_query_rows += 1

    _judge(report)
    return report


def _judge(report: ValidationReport) -> None:
    """Decide whether the data is usable; the reasons go into ``report.errors``."""
    if report.products == 0:
        report.errors.append("no readable product rows")
        return
    if report.counts["duplicate_id"]:
        report.errors.append(
            f"{report.counts['duplicate_id']} duplicate product id(s): ids must be unique"
        )
    total = report.rows
    bad = total - report.usable_products - report.counts["duplicate_id"]
    if total and bad / total > report.max_bad_fraction:
        report.errors.append(
            f"{bad} of {total} catalog rows ({bad / total:.1%}) are unusable, "
            f"more than max_bad_fraction={report.max_bad_fraction:.1%}"
        )
    if report.queries is not None:
        bad_q = report.query_rows - report.usable_query_rows
        if report.query_rows == 0:
            report.errors.append("query log has no rows")
        elif bad_q / report.query_rows > report.max_bad_fraction:
            report.errors.append(
                f"{bad_q} of {report.query_rows} query rows ({bad_q / report.query_rows:.1%}) "
                f"are unusable, more than max_bad_fraction={report.max_bad_fraction:.1%}"
            )

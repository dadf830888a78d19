"""``makevl index build|add|delete|info`` as library calls taking plain arguments.

Each function does one CLI action's work: pick the encoder (a checkpoint, or
the hashing encoder), pick the catalog's column mapping (the preset's, the
model's or the index's own, with ``--column`` pairs on top), read the catalog
and call :func:`~makevl.index.build.build_index` or
:func:`~makevl.index.build.update_index`. The CLI only parses and prints.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from makevl.config import ColumnMapping, DataConfig
from makevl.data.catalog import Product, RowError, iter_catalog
from makevl.data.presets import column_mapping, get_preset
from makevl.index.backends import DEFAULT_BACKEND
from makevl.index.build import BuildReport, build_index, update_index
from makevl.index.encoders import HashingEncoder, load_checkpoint_encoder
from makevl.index.store import read_manifest, verify_files

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CatalogOptions:
    """How to read a catalog file: its columns, text encoding, image folder, row limit."""

    preset: str | None = None  # the column mapping of a known dataset
    columns: Sequence[str] = ()  # FIELD=COLUMN pairs on top of it
    encoding: str = "utf-8"
    image_root: str | None = None  # a folder outside the catalog's that images may be in
    limit: int | None = None  # read only the first N rows


def catalog_columns(base: ColumnMapping, options: CatalogOptions) -> ColumnMapping:
    """The preset's mapping (else ``base``) with the ``FIELD=COLUMN`` pairs on top."""
    preset = options.preset
    return column_mapping(list(options.columns), get_preset(preset).columns if preset else base)


def columns_of_config(config: dict[str, Any] | None) -> ColumnMapping:
    """The column mapping a model's run config trained with."""
    data = (config or {}).get("data", {})
    if data.get("preset") == "custom" and data.get("columns"):
        return ColumnMapping.model_validate(data["columns"])
    return get_preset(data.get("preset", "custom")).columns


def catalog_rows(
    path: str | Path, columns: ColumnMapping, options: CatalogOptions
) -> Iterable[Product | RowError]:
    """The catalog's rows as a stream, the first ``options.limit`` only if given."""
    rows = iter_catalog(path, columns, options.encoding, options.image_root)
    return itertools.islice(rows, options.limit) if options.limit else rows


def catalog_size(path: str | Path, limit: int | None) -> int | None:
    """Rows to expect, for the progress bar: known up front for Parquet only."""
    if Path(path).suffix.lower() != ".parquet" or not Path(path).is_file():
        return limit
    import pyarrow.parquet as pq

    rows = pq.ParquetFile(path).metadata.num_rows
    return min(rows, limit) if limit else rows


def build_from_catalog(
    out: str | Path,
    *,
    checkpoint: str | Path | None = None,
    hashing_dim: int | None = None,
    catalog: str | Path | None = None,
    options: CatalogOptions = CatalogOptions(),
    batch_size: int = 64,
    progress: bool = True,
    backend_name: str = DEFAULT_BACKEND,
    product_runtime: str = "onnx",
    image_workers: int = 1,
    **backend_options: Any,
) -> BuildReport:
    """Encode a catalog with a checkpoint (or the hashing encoder) into a new index at ``out``.

    Without ``catalog`` the checkpoint's own training shop is indexed.
    """
    if (checkpoint is None) == (hashing_dim is None):
        raise ValueError("give exactly one of a checkpoint and a hashing encoder dim")
    if checkpoint is not None:
        encoder, spec, model_hash, config = load_checkpoint_encoder(checkpoint)
    else:
        encoder = HashingEncoder(hashing_dim)
        spec, model_hash, config = encoder.spec, encoder.model_hash, None
    mapping = catalog_columns(columns_of_config(config), options)
    if catalog is not None:
        rows = catalog_rows(catalog, mapping, options)
        total = catalog_size(catalog, options.limit)
    elif config is not None:
        rows = _training_shop(config, options.limit)
        total = len(rows)
    else:
        raise ValueError("the hashing encoder needs a catalog")
    return build_index(
        rows,
        out,
        encoder,
        encoder_spec=spec,
        model_hash=model_hash,
        config=config,
        columns=mapping.model_dump(),
        backend_name=backend_name,
        batch_size=batch_size,
        total=total,
        progress=progress,
        product_runtime=product_runtime,
        image_workers=image_workers,
        **backend_options,
    )


def _training_shop(config: dict[str, Any], limit: int | None) -> list[Product]:
    """The products of the shop a model was trained on; its unreadable rows are noted."""
    from makevl.data.shop import load_shop

    shop = load_shop(DataConfig.model_validate({**config["data"], "sparse_titles": False}))
    if shop.errors:
        log.warning(
            "%d rows of shop %r could not be read; `makevl data validate` lists them",
            len(shop.errors),
            shop.name,
        )
    return shop.products[: limit or None]


def add_from_catalog(
    index_dir: str | Path,
    catalog: str | Path,
    *,
    checkpoint: str | Path | None = None,
    options: CatalogOptions = CatalogOptions(),
    batch_size: int = 64,
    progress: bool = True,
) -> BuildReport:
    """Add or replace (same id) a catalog's products, read with the index's own columns."""
    manifest = read_manifest(index_dir)
    stored = manifest.get("columns")
    base = (
        ColumnMapping.model_validate(stored)
        if stored
        else columns_of_config(manifest.get("config"))
    )
    mapping = catalog_columns(base, options)
    encoder = model_hash = None
    if checkpoint is not None:
        encoder, _spec, model_hash, _config = load_checkpoint_encoder(checkpoint)
    return update_index(
        index_dir,
        add=catalog_rows(catalog, mapping, options),
        encoder=encoder,
        model_hash=model_hash,
        batch_size=batch_size,
        progress=progress,
    )


def delete_products(
    index_dir: str | Path,
    ids: Sequence[str] = (),
    ids_file: str | Path | None = None,
    missing_ok: bool = False,
) -> BuildReport:
    """Delete products by id: ``ids`` and those in ``ids_file`` (one per line)."""
    ids = list(ids)
    if ids_file is not None:
        lines = Path(ids_file).read_text(encoding="utf-8").splitlines()
        ids += [line.strip() for line in lines if line.strip()]
    if not ids:
        raise ValueError("give product ids with --ids or --ids-file")
    return update_index(index_dir, delete=ids, missing_ok=missing_ok, progress=False)


def index_info(index_dir: str | Path, verify: bool = False) -> dict[str, Any]:
    """The manifest without the model's run config; ``verify`` checks every file's checksum."""
    manifest = read_manifest(index_dir)
    if verify:
        verify_files(Path(index_dir), manifest)
    return {k: v for k, v in manifest.items() if k != "config"}

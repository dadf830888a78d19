"""A small catalog with real image files, and index builds with the hashing encoder."""

from __future__ import annotations

import csv
from pathlib import Path

from helpers import write_image
from makevl.data.catalog import iter_catalog
from makevl.index.build import build_index
from makevl.index.encoders import HashingEncoder

# id, title, colour, category
PRODUCTS = [
    ("p1", "Red cotton t-shirt for men", (220, 20, 20), "tshirt"),
    ("p2", "Blue denim jeans slim fit", (20, 20, 220), "jeans"),
    ("p3", "Green running shoes lightweight", (20, 200, 20), "shoes"),
    ("p4", "Black leather handbag", (10, 10, 10), "bag"),
    ("p5", "Yellow summer dress floral", (230, 220, 20), "dress"),
    ("p6", "White canvas sneakers", (250, 250, 250), "shoes"),
    ("p7", "Grey wool sweater", (128, 128, 128), "sweater"),
    ("p8", "Brown leather belt", (120, 70, 20), "belt"),
    ("p9", "Pink silk scarf", (240, 150, 180), "scarf"),
    ("p10", "Navy formal blazer", (20, 30, 90), "blazer"),
    ("p11", "Orange sports cap", (250, 130, 10), "cap"),
    ("p12", "Silver analog wrist watch", (190, 190, 195), "watch"),
]


def write_catalog(folder: Path, rows=PRODUCTS, name: str = "catalog.csv") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "title", "image", "category"])
        for pid, title, colour, category in rows:
            write_image(folder / "images" / f"{pid}.png", colour)
            w.writerow([pid, title, f"images/{pid}.png", category])
    return path


def release_milvus_lite() -> None:
    """Stop the Milvus Lite servers this process started: another process may then open them."""
    from milvus_lite import server_manager_instance

    server_manager_instance.release_all()


def build(index_dir: Path, catalog, encoder=None, **options):
    encoder = encoder or HashingEncoder(32)
    items = iter_catalog(catalog) if isinstance(catalog, Path) else catalog
    return build_index(
        items,
        index_dir,
        encoder,
        encoder_spec=encoder.spec,
        model_hash=encoder.model_hash,
        progress=False,
        **options,
    )

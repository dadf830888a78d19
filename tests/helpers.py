"""Small test helpers importable from any test module (tests/ is on pythonpath)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image


def write_image(path: Path, colour=(200, 30, 30), mode: str = "RGB", size=(32, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, colour)
    if mode != "RGB":
        img = img.convert(mode)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    img.save(path, format=fmt)
    return path


# Smallest MAKE that trains in seconds: shared by the training and index tests.
TINY_MODEL_OVERRIDES = [
    "data.image_size=32",
    "data.max_query_tokens=8",
    "data.max_title_tokens=16",
    "model.text_backbone=tiny",
    "model.image_backbone=tiny",
    "model.embed_dim=32",
    "model.fusion_layers=1",
    "model.fusion_heads=2",
]


def write_pair_shop(folder: Path, train_products: int, queries_per_product: int = 2) -> Path:
    """A CSV shop with exactly ``train_products * queries_per_product`` train pairs.

    Val and test products (and their queries) come along, as the split puts
    them. Returns the catalog; the query log is ``queries.csv`` beside it.
    """
    import csv

    from makevl.data.shop import split_of

    colours, kinds = ["red", "blue", "green", "black"], ["shirt", "shoes", "bag"]
    write_image(folder / "images" / "product.png")
    products, queries = [], []
    while sum(split_of(row[0]) == "train" for row in products) < train_products:
        n = len(products)
        colour, kind = colours[n % 4], kinds[n % 3]
        products.append((f"p{n:04d}", f"{colour} cotton {kind} model {n}", "images/product.png",
                         kind, colour))  # fmt: skip
        queries += [(f"{colour} {kind} {q}", f"p{n:04d}", 1) for q in range(queries_per_product)]
    for name, header, rows in [
        ("catalog.csv", ["id", "title", "image", "category", "colour"], products),
        ("queries.csv", ["query", "product_id", "label"], queries),
    ]:
        with (folder / name).open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)
    return folder / "catalog.csv"

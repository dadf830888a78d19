"""The built-in demo shop: a procedurally drawn catalog with complete relevance labels.

It exists so every command runs out of the box and so the benefit of modal
adaptation can be seen without real data. Categories differ in which modality
carries the information a shopper asks for:

* apparel (dress, t-shirt, trousers): the pattern is only in the picture (titles
  never name it) and the colour is in the title for about half the products;
* electronics (phone, laptop, watch): brand and spec (storage, RAM, case size)
  are only in the title; all pictures of a category look alike;
* shoes and bags: colour is in both, brand and material only in the title.

Queries are 2-4 words built from attribute values; each is labelled relevant
to *every* product having all the attributes it names, so recall is exact.
Everything comes from ``random.Random`` seeded by strings (independent of
hash randomisation), and PNGs carry no timestamps: same arguments, same bytes.
"""

from __future__ import annotations

import csv
import random
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from makevl.data.catalog import Product, write_catalog_csv

ATTRIBUTES = ("category", "brand", "colour", "pattern", "gender", "material", "spec")
APPAREL = ("dress", "t-shirt", "trousers")
ELECTRONICS = ("phone", "laptop", "watch")
CATEGORIES = ("dress", "t-shirt", "trousers", "shoes", "bag", "phone", "laptop", "watch")
PATTERNS = ("plain", "striped", "checked", "dotted")

COLOURS = {  # RGB of the fabric / body
    "black": (28, 28, 32), "white": (244, 244, 240), "grey": (130, 130, 134),
    "red": (200, 32, 40), "blue": (36, 84, 200), "green": (44, 150, 64),
    "yellow": (240, 206, 44), "pink": (240, 140, 180), "purple": (118, 52, 160),
    "brown": (120, 76, 42), "silver": (192, 194, 200),
}  # fmt: skip

# Values per category. Every value is one lower-case word and no word is a value
# of two different attributes, so a query's words name its constraints unambiguously.
CHOICES: dict[str, dict[str, tuple[str, ...]]] = {
    "dress": {
        "brand": ("zara", "mango", "shein", "uniqlo"),
        "colour": ("black", "white", "red", "blue", "green", "yellow", "pink", "purple"),
        "pattern": PATTERNS, "gender": ("women",), "material": ("cotton", "silk", "chiffon"),
    },
    "t-shirt": {
        "brand": ("uniqlo", "zara", "gap", "hanes"),
        "colour": ("black", "white", "grey", "red", "blue", "green", "yellow", "brown"),
        "pattern": PATTERNS, "gender": ("women", "men"), "material": ("cotton", "polyester"),
    },
    "trousers": {
        "brand": ("levis", "gap", "uniqlo", "dockers"),
        "colour": ("black", "grey", "blue", "brown", "green", "white"),
        "pattern": PATTERNS, "gender": ("women", "men"), "material": ("cotton", "denim", "linen"),
    },
    "shoes": {
        "brand": ("nike", "adidas", "puma", "asics", "vans"),
        "colour": ("black", "white", "grey", "red", "blue"),
        "gender": ("women", "men"), "material": ("leather", "canvas", "mesh"),
    },
    "bag": {
        "brand": ("coach", "kipling", "samsonite", "fossil"),
        "colour": ("black", "brown", "red", "pink", "blue"),
        "material": ("leather", "canvas", "nylon"),
    },
    "phone": {
        "brand": ("apple", "samsung", "xiaomi", "huawei", "oppo"),
        "colour": ("black", "silver", "white"),
        "spec": ("64gb", "128gb", "256gb", "512gb"),
    },
    "laptop": {
        "brand": ("apple", "dell", "lenovo", "asus", "hp"),
        "colour": ("black", "silver"),
        "spec": ("8gb", "16gb", "32gb"),
    },
    "watch": {
        "brand": ("apple", "samsung", "garmin", "huawei", "fitbit"),
        "colour": ("black", "silver", "white"),
        "spec": ("40mm", "42mm", "44mm", "46mm"),
    },
}  # fmt: skip
PATTERN_WEIGHTS = (0.4, 0.2, 0.2, 0.2)

# Query templates (attribute order = word order) with sampling weights.
QUERY_TEMPLATES: dict[str, list[tuple[tuple[str, ...], int]]] = {
    "apparel": [
        (("pattern", "category"), 3), (("colour", "pattern", "category"), 4),
        (("colour", "category"), 2), (("gender", "pattern", "category"), 1),
        (("gender", "colour", "pattern", "category"), 1), (("brand", "category"), 1),
        (("material", "colour", "category"), 1),
    ],
    "shoes": [
        (("brand", "category"), 2), (("colour", "brand", "category"), 2),
        (("colour", "category"), 1), (("gender", "brand", "category"), 1),
        (("material", "category"), 1),
    ],
    "bag": [
        (("brand", "category"), 2), (("brand", "colour", "category"), 2),
        (("colour", "category"), 1), (("colour", "material", "category"), 1),
    ],
    "electronics": [
        (("brand", "spec", "category"), 3), (("spec", "category"), 2),
        (("spec", "category", "colour"), 1), (("brand", "category"), 1),
        (("brand", "spec", "category", "colour"), 1),
    ],
}  # fmt: skip

# Title filler: no colour, pattern or spec words, so titles leak nothing the
# demo means to keep in the picture.
FILLER = {
    "dress": "Elegant|Party|Summer|Maxi|A-Line|Sleeveless|Evening|Beach Holiday|Wrap|Midi|"
    "Korean Style|Slim Waist|Vintage|Office Lady",
    "t-shirt": "Casual|Short Sleeve|Round Neck|Oversize|Loose Fit|Summer Top|Streetwear|Basic|"
    "Breathable|Tee|Unisex Style|Soft Touch",
    "trousers": "High Waist|Straight Leg|Wide Leg|Casual Pants|Slim Fit|Jogger|Office|"
    "Stretch|Loose|Cargo|Ankle Length|Elastic Waist",
    "shoes": "Running|Sneakers|Breathable|Lightweight|Non-Slip|Sports|Casual|Walking|Gym|"
    "Outdoor|Cushioned Sole|Trainers",
    "bag": "Shoulder Bag|Tote|Large Capacity|Crossbody|Handbag|Travel|Waterproof|"
    "Zipper Pocket|Everyday|Work|Adjustable Strap",
    "phone": "Smartphone|5G|Dual SIM|6.7 Inch AMOLED|Unlocked|Fast Charging|50MP Camera|"
    "Long Battery Life|Mobile Phone|Face Unlock|NFC",
    "laptop": "Notebook|Ultrabook|FHD Display|Thin And Light|Office|Backlit Keyboard|"
    "Wi-Fi 6|Long Battery|Student|Business|Fingerprint Reader",
    "watch": "Smartwatch|Fitness Tracker|Heart Rate|GPS|Waterproof|Sleep Monitor|"
    "AMOLED|Bluetooth Call|Sports Modes|Step Counter",
}
PROMO = "2024 New|Hot Sale|Free Shipping|Best Seller|Official Store|Limited Offer|Top Quality"


def group_of(category: str) -> str:
    if category in APPAREL:
        return "apparel"
    if category in ELECTRONICS:
        return "electronics"
    return category


# --------------------------------------------------------------------------- products


def sample_attributes(category: str, rng: random.Random) -> dict[str, str]:
    """All ``ATTRIBUTES`` in a fixed order; ``""`` where a category has no such attribute."""
    choices = CHOICES[category]
    attributes = {name: "" for name in ATTRIBUTES}
    attributes["category"] = category
    for name, values in choices.items():
        weights = PATTERN_WEIGHTS if name == "pattern" else None
        attributes[name] = rng.choices(values, weights=weights)[0]
    return attributes


def _show(value: str) -> str:
    return value.upper() if value[0].isdigit() else value.capitalize()


def make_title(attributes: dict[str, str], rng: random.Random) -> str:
    """A long keyword-stuffed title; apparel never names the pattern, colour half the time."""
    category = attributes["category"]
    a = attributes
    head = [_show(a["brand"]), rng.choice(PROMO.split("|"))]
    if a["gender"]:
        head.append(_show(a["gender"]))
    show_colour = category not in APPAREL or rng.random() < 0.5
    if a["colour"] and show_colour:
        head.append(_show(a["colour"]))
    if a["material"]:
        head.append(_show(a["material"]))
    if a["spec"]:
        head.append(_show(a["spec"]))
    head.append("T-Shirt" if category == "t-shirt" else _show(category))
    filler = FILLER[category].split("|")
    rng.shuffle(filler)
    tail = filler + [p for p in PROMO.split("|") if p not in head]
    target = rng.randint(12, 22)
    words = " ".join(head).split()
    for phrase in tail:
        if len(words) >= target:
            break
        words += phrase.split()
    return " ".join(words[:25])


# --------------------------------------------------------------------------- pictures

# Silhouettes in unit coordinates (x right, y down).
SHAPES = {
    "t-shirt": [(0.32, 0.14), (0.42, 0.11), (0.5, 0.17), (0.58, 0.11), (0.68, 0.14),
                (0.9, 0.32), (0.8, 0.45), (0.7, 0.37), (0.7, 0.88), (0.3, 0.88),
                (0.3, 0.37), (0.2, 0.45), (0.1, 0.32)],
    "dress": [(0.4, 0.08), (0.44, 0.08), (0.47, 0.18), (0.53, 0.18), (0.56, 0.08), (0.6, 0.08),
              (0.63, 0.34), (0.58, 0.44), (0.82, 0.92), (0.18, 0.92), (0.42, 0.44), (0.37, 0.34)],
    "trousers": [(0.3, 0.08), (0.7, 0.08), (0.76, 0.92), (0.56, 0.92), (0.5, 0.36),
                 (0.44, 0.92), (0.24, 0.92)],
    "shoes": [(0.08, 0.4), (0.2, 0.36), (0.34, 0.44), (0.44, 0.3), (0.54, 0.32), (0.62, 0.44),
              (0.84, 0.5), (0.93, 0.57), (0.93, 0.66), (0.08, 0.66)],
    "bag": [(0.2, 0.4), (0.8, 0.4), (0.86, 0.86), (0.14, 0.86)],
}  # fmt: skip
SCREEN = (22, 26, 38)


def _pattern_fill(colour, pattern: str, size: int, rng: random.Random) -> np.ndarray:
    """An RGB array of the fabric colour with the pattern in a contrasting colour."""
    base = np.array(colour, dtype=np.uint8)
    luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    ink = np.array((34, 34, 52) if luminance > 150 else (238, 238, 238), dtype=np.uint8)
    period = size * rng.uniform(0.08, 0.11)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    x, y = x + rng.uniform(0, period), y + rng.uniform(0, period)
    if pattern == "striped":
        marked = (y % period) < period * 0.45
    elif pattern == "checked":
        marked = ((x // (period / 2)) + (y // (period / 2))) % 2 == 1
    elif pattern == "dotted":
        dx, dy = x % period - period / 2, y % period - period / 2
        marked = dx * dx + dy * dy < (period * 0.25) ** 2
    else:
        marked = np.zeros((size, size), dtype=bool)
    return np.where(marked[..., None], ink, base)


def _jitter(colour, rng: random.Random, amount: int = 12) -> tuple[int, int, int]:
    return tuple(min(255, max(0, c + rng.randint(-amount, amount))) for c in colour)


def render_product_image(
    category: str, colour: str, pattern: str, rng: random.Random, size: int = 96
) -> Image.Image:
    """Draw one product. Brand and spec are deliberately not inputs: the picture cannot show them."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown demo category {category!r}; expected one of {CATEGORIES}")
    canvas = size * 2  # draw at 2x and downsample for smooth edges
    scale = rng.uniform(0.76, 0.96)
    cx, cy = 0.5 + rng.uniform(-0.06, 0.06), 0.5 + rng.uniform(-0.06, 0.06)

    def pt(x: float, y: float) -> tuple[float, float]:
        return ((cx + (x - 0.5) * scale) * canvas, (cy + (y - 0.5) * scale) * canvas)

    def box(x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]]:
        return [pt(x0, y0), pt(x1, y1)]

    rgb = _jitter(COLOURS[colour], rng)
    edge = tuple(int(c * 0.6) for c in rgb)
    layer = Image.new("RGBA", (canvas, canvas), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    radius = int(0.05 * scale * canvas)
    if category in SHAPES:
        polygon = [pt(x, y) for x, y in SHAPES[category]]
        mask = Image.new("L", (canvas, canvas), 0)
        ImageDraw.Draw(mask).polygon(polygon, fill=255)
        fill = Image.fromarray(_pattern_fill(rgb, pattern or "plain", canvas, rng))
        layer.paste(fill, mask=mask)
        draw.polygon(polygon, outline=edge, width=2)
        if category == "shoes":
            draw.rectangle(box(0.09, 0.66, 0.93, 0.73), fill=(236, 236, 232), outline=(90, 90, 90))
        elif category == "bag":
            draw.arc(box(0.32, 0.2, 0.68, 0.62), 180, 360, fill=edge, width=max(2, canvas // 40))
    elif category == "phone":
        draw.rounded_rectangle(box(0.32, 0.1, 0.68, 0.9), radius, fill=rgb, outline=edge, width=2)
        draw.rectangle(box(0.35, 0.16, 0.65, 0.83), fill=SCREEN)
        draw.ellipse(box(0.48, 0.85, 0.52, 0.88), fill=edge)
    elif category == "laptop":
        draw.rounded_rectangle(box(0.2, 0.16, 0.8, 0.62), radius, fill=rgb, outline=edge, width=2)
        draw.rectangle(box(0.24, 0.2, 0.76, 0.58), fill=SCREEN)
        base = [pt(0.12, 0.63), pt(0.88, 0.63), pt(0.95, 0.75), pt(0.05, 0.75)]
        draw.polygon(base, fill=rgb, outline=edge, width=2)
    else:  # watch
        draw.rectangle(box(0.41, 0.04, 0.59, 0.96), fill=(44, 44, 48))
        draw.rounded_rectangle(box(0.3, 0.28, 0.7, 0.72), radius, fill=rgb, outline=edge, width=2)
        draw.rounded_rectangle(box(0.34, 0.32, 0.66, 0.68), radius // 2, fill=SCREEN)
    layer = layer.rotate(rng.uniform(-8, 8), resample=Image.Resampling.BILINEAR)
    shade = rng.randint(214, 250)
    picture = Image.new("RGB", (canvas, canvas), _jitter((shade, shade, shade), rng, 5))
    picture.paste(layer, mask=layer.getchannel("A"))
    return picture.resize((size, size), Image.Resampling.LANCZOS)


# --------------------------------------------------------------------------- queries


def make_queries(products: list[Product], rng: random.Random) -> dict[str, list[str]]:
    """Sample queries from products, then label every product matching all named attributes."""
    constraints: dict[str, tuple[tuple[str, str], ...]] = {}
    for product in products:
        templates = QUERY_TEMPLATES[group_of(product.attributes["category"])]
        names = [t for t, _ in templates]
        weights = [w for _, w in templates]
        for fields in rng.choices(names, weights=weights, k=rng.choice((1, 1, 2))):
            values = tuple((name, product.attributes[name]) for name in fields)
            if all(value for _, value in values):
                constraints.setdefault(" ".join(value for _, value in values), values)
    by_category: dict[str, list[Product]] = {}
    for product in products:
        by_category.setdefault(product.attributes["category"], []).append(product)
    relevant: dict[str, list[str]] = {}
    for text in sorted(constraints):
        wanted = constraints[text]
        category = dict(wanted)["category"]
        relevant[text] = [
            p.id for p in by_category[category] if all(p.attributes[n] == v for n, v in wanted)
        ]
    return relevant


# --------------------------------------------------------------------------- the shop


def make_demo_shop(
    out_dir: str | Path, n_products: int = 2000, seed: int = 0, image_size: int = 96
) -> dict:
    """Write ``catalog.csv``, ``queries.csv`` and ``images/*.png`` into ``out_dir``.

    Returns statistics: products, queries, pairs, categories, seconds, paths.
    """
    if n_products < 1:
        raise ValueError(f"n_products must be at least 1, got {n_products}")
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16 pixels, got {image_size}")
    start = time.perf_counter()
    out_dir = Path(out_dir)
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)

    rng = random.Random(f"makevl-demo:{seed}")
    # Balanced categories in a shuffled order, so any prefix of ids is mixed.
    categories = [CATEGORIES[i % len(CATEGORIES)] for i in range(n_products)]
    rng.shuffle(categories)
    products: list[Product] = []
    for index, category in enumerate(categories):
        product_id = f"{index:06d}"
        attributes = sample_attributes(category, rng)
        title = make_title(attributes, rng)
        image_path = image_dir / f"{product_id}.png"
        picture_rng = random.Random(f"makevl-demo:{seed}:image:{product_id}")
        picture = render_product_image(
            category, attributes["colour"], attributes["pattern"], picture_rng, image_size
        )
        picture.save(image_path, format="PNG", optimize=False, compress_level=6)
        keywords = [v for v in attributes.values() if v]
        products.append(Product(product_id, title, str(image_path), attributes, keywords))

    catalog_path = out_dir / "catalog.csv"
    write_catalog_csv(products, catalog_path)
    relevant = make_queries(products, rng)
    queries_path = out_dir / "queries.csv"
    pairs = 0
    with queries_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["query", "product_id", "label"])
        for text, ids in relevant.items():
            for product_id in ids:
                writer.writerow([text, product_id, 1])
            pairs += len(ids)
    counts = [len(ids) for ids in relevant.values()]
    return {
        "products": len(products),
        "queries": len(relevant),
        "pairs": pairs,
        "categories": len(set(categories)),
        "median_relevant": statistics.median(counts) if counts else 0,
        "seconds": round(time.perf_counter() - start, 2),
        "paths": {
            "catalog": str(catalog_path),
            "queries": str(queries_path),
            "images": str(image_dir),
        },
    }

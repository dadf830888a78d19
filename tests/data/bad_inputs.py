"""Catalogs built to break the readers: escaping image paths and runaway CSV quotes."""

from __future__ import annotations

from pathlib import Path

from helpers import write_image


def catalog_with_escaping_images(root: Path) -> Path:
    """A shop whose rows point at files inside and outside its folder."""
    shop = root / "shop"
    write_image(shop / "images" / "ok.png")
    secret = write_image(root / "elsewhere" / "secret.png")
    (shop / "images" / "link-out.png").symlink_to(secret)
    (shop / "images" / "link-in.png").symlink_to(shop / "images" / "ok.png")
    rows = [
        ("ok", "images/ok.png"),
        ("absolute_inside", str(shop / "images" / "ok.png")),
        ("link_inside", "images/link-in.png"),
        ("passwd", "/etc/passwd"),
        ("hostname", "../../etc/hostname"),
        ("dotdot", "images/../../elsewhere/secret.png"),
        ("absolute_outside", str(secret)),
        ("link_outside", "images/link-out.png"),
    ]
    catalog = shop / "catalog.csv"
    catalog.write_text("id,title,image\n" + "".join(f"{i},Title {i},{ref}\n" for i, ref in rows))
    return catalog


def runaway_catalog(folder: Path, opened_at: int, rows: int = 500, closed_at: int | None = None,
                    column: str = "title", suffix: str = ".csv") -> Path:
    """``rows`` products on lines 2..rows+1; an unclosed quote in ``column`` at ``opened_at``."""
    sep = "\t" if suffix == ".tsv" else ","
    lines = [sep.join(["id", "title", "image"])]
    for line in range(2, rows + 2):
        title, image = f"Title {line}", f"images/p{line}.png"
        if line == opened_at:
            title, image = (f'"{title}', image) if column == "title" else (title, f'"{image}')
        if line == closed_at:
            title, image = (f'"{title}"', image) if column == "title" else (title, f'"{image}"')
        lines.append(sep.join([f"p{line}", title, image]))
    path = folder / f"catalog{suffix}"
    path.write_text("\n".join(lines) + "\n")
    return path

"""A synthetic catalogue whose images really depend on the attributes, for sanity checks without data.

Category draws a shape, colour fills it, each material adds a texture, style sets the background:
an image encoder can see every field, so a working tower must learn them all.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from lookalike.catalogue.schema import AttrValue, Catalogue, CatalogueSchema, ImageRef, LoadReport, Product

COLOURS = {
    "red": (200, 30, 30),
    "green": (30, 160, 60),
    "blue": (40, 60, 200),
    "yellow": (230, 200, 40),
    "black": (20, 20, 20),
    "white": (245, 245, 245),
}
CATEGORIES = ["shirt", "dress", "coat", "shoe", "bag"]
MATERIALS = ["denim", "knit", "leather", "lace"]
STYLES = {"casual": (200, 200, 200), "formal": (90, 90, 120), "street": (150, 110, 80)}

SCHEMA = CatalogueSchema(
    id_field="id",
    image_field="image",
    single_fields=["category", "colour", "style"],
    list_fields=["material"],
    text_field="text",
    category_field="category",
)


def _draw(category: str, colour: str, materials: list[str], style: str, rng: np.random.Generator) -> Image.Image:
    im = Image.new("RGB", (64, 64), STYLES[style])
    d = ImageDraw.Draw(im)
    fill = COLOURS[colour]
    j = int(rng.integers(-3, 4))

    def bag() -> None:
        d.rectangle([16, 24 + j, 48, 56], fill=fill)
        d.arc([22, 10 + j, 42, 34 + j], 180, 360, fill=fill, width=3)

    shapes = {
        "shirt": lambda: d.polygon([(12, 14 + j), (52, 14 + j), (46, 56), (18, 56)], fill=fill),
        "dress": lambda: d.polygon([(32, 6 + j), (54, 58), (10, 58)], fill=fill),
        "coat": lambda: d.rectangle([14, 8 + j, 50, 60], fill=fill),
        "shoe": lambda: d.ellipse([6, 30 + j, 58, 52 + j], fill=fill),
        "bag": bag,
    }
    shapes[category]()
    ink = (255 - fill[0], 255 - fill[1], 255 - fill[2])
    if "denim" in materials:
        for y in range(0, 64, 6):
            d.line([(0, y), (63, y)], fill=ink, width=1)
    if "knit" in materials:
        for x in range(0, 64, 6):
            d.line([(x, 0), (x, 63)], fill=ink, width=1)
    if "leather" in materials:
        for x in range(4, 64, 12):
            for y in range(4, 64, 12):
                d.ellipse([x, y, x + 3, y + 3], fill=ink)
    if "lace" in materials:
        d.line([(0, 0), (63, 63)], fill=ink, width=2)
        d.line([(0, 63), (63, 0)], fill=ink, width=2)
    return im


def synthetic_catalogue(n: int = 600, seed: int = 0, image_dir: Path | None = None) -> Catalogue:
    rng = np.random.default_rng(seed)
    root = Path(image_dir or Path(tempfile.gettempdir()) / f"lookalike-synthetic-{seed}-{n}")
    root.mkdir(parents=True, exist_ok=True)
    products = []
    for i in range(n):
        category = CATEGORIES[rng.integers(len(CATEGORIES))]
        colour = list(COLOURS)[rng.integers(len(COLOURS))]
        style = list(STYLES)[rng.integers(len(STYLES))]
        materials = sorted(rng.choice(MATERIALS, size=int(rng.integers(1, 3)), replace=False).tolist())
        path = root / f"{i:05d}.png"
        if not path.exists():
            _draw(category, colour, materials, style, rng).save(path)
        else:
            rng.integers(-3, 4)  # keep the random stream identical whether or not the image was cached
        text = f"{style} {colour} {' and '.join(materials)} {category}"
        attrs: dict[str, AttrValue] = {"category": category, "colour": colour, "style": style, "material": materials}
        products.append(Product(f"syn{i:05d}", ImageRef(path), attrs, text))
    report = LoadReport(source=f"synthetic(n={n}, seed={seed})", loaded=n)
    report.counts["category"] = Counter(p.attributes["category"] for p in products)
    return Catalogue(products, SCHEMA, root, report)

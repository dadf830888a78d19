"""How well can a linear probe read a product's colour from the frozen image features?

A cheap check of the image-branch hypothesis of issue #8 (colour lives in the
early layers of an ImageNet CNN, which the final pooled features mostly
discard), without training MAKE: EfficientNet-Lite0 encodes fashion-mini
train and validation photos once; a ridge-regression probe is fit on train
photos for their baseColour (12 most common colours) and scored on
validation photos, for the final map alone, the early stages alone, and both
(``model.image_pooled_stages``), and the colour histograms of the pixels
(``model.image_colour_levels``). The test split is never read.

    python benchmarks/colour_probe.py            # about 2 CPU minutes on a quiet machine
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter

import torch
import torch.nn.functional as F

from makevl.config import DataConfig
from makevl.data.catalog import Product
from makevl.data.images import load_image
from makevl.data.shop import load_shop
from makevl.models.backbones import ImageTower, colour_histogram_size, create_image_tower


def colour(product: Product) -> str:
    return product.attributes.get("baseColour", "").strip().lower()


def encode(tower: ImageTower, products: list[Product], size: int) -> torch.Tensor:
    pooled = []
    for start in range(0, len(products), 32):
        pixels = [tower.transform(load_image(p.image), size) for p in products[start : start + 32]]
        with torch.no_grad():
            pooled.append(tower(torch.stack(pixels))[1])
    return torch.cat(pooled)


def probe_accuracy(train: torch.Tensor, train_y: torch.Tensor, val: torch.Tensor,
                   val_y: torch.Tensor, classes: int, ridge: float = 10.0) -> float:
    """Standardize on train, fit one-vs-all ridge regression, score top-1 on val."""
    mean, std = train.mean(0), train.std(0) + 1e-6
    train, val = (torch.cat([(x - mean) / std, torch.ones(len(x), 1)], 1) for x in (train, val))
    targets = F.one_hot(train_y, classes).float()
    weights = torch.linalg.solve(train.T @ train + ridge * torch.eye(train.shape[1]),
                                 train.T @ targets)
    return (val @ weights).argmax(1).eq(val_y).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-sample", type=int, default=1200)
    parser.add_argument("--stages", type=int, default=4, help="early stages pooled")
    parser.add_argument("--colour-levels", type=int, default=5,
                        help="soft bins per RGB channel of the colour histograms (0: none)")
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()

    shop = load_shop(DataConfig(preset="fashion-mini"))
    train, val = shop.products_in("train"), shop.products_in("val")
    random.Random(0).shuffle(train)
    train = train[: args.train_sample]
    colours = [c for c, _ in Counter(colour(p) for p in train).most_common(12)]
    train = [p for p in train if colour(p) in colours]
    val = [p for p in val if colour(p) in colours]
    train_y = torch.tensor([colours.index(colour(p)) for p in train])
    val_y = torch.tensor([colours.index(colour(p)) for p in val])

    tower = create_image_tower("efficientnet_lite0").pool_stages(args.stages)
    tower = tower.colour_histogram(args.colour_levels).eval()
    train_x, val_x = encode(tower, train, args.image_size), encode(tower, val, args.image_size)
    final, width = tower.num_features, tower.pooled_features
    stages_end = width - (colour_histogram_size(args.colour_levels) if args.colour_levels else 0)
    columns = {f"final map only ({final})": slice(0, final),
               f"early stages only ({stages_end - final})": slice(final, stages_end),
               f"final map + {args.stages} stages ({stages_end})": slice(0, stages_end)}
    if args.colour_levels:
        columns |= {f"colour histograms only ({width - stages_end})": slice(stages_end, width),
                    f"everything ({width}, the pooled image vector)": slice(0, width)}
    results = {name: probe_accuracy(train_x[:, c], train_y, val_x[:, c], val_y, len(colours))
               for name, c in columns.items()}
    majority = Counter(train_y.tolist()).most_common(1)[0][0]
    results["majority colour"] = (val_y == majority).float().mean().item()
    print(json.dumps({"train photos": len(train), "val photos": len(val), "colours": colours,
                      "val accuracy": results,
                      "seconds": round(time.perf_counter() - started)}, indent=1))


if __name__ == "__main__":
    main()

"""A tiny MAKE model and one batch for it, shared by the tests of tests/models."""

from __future__ import annotations

import torch

from makevl.config import ModelConfig
from makevl.models.inference import MakeEncoder
from makevl.models.make import MakeModel

SIZE = 32
KEYWORDS = 6
QUERIES = ["red shoe", "blue shirt", "black watch", "green cap", "white socks", "pink bag"]
TITLES = [
    "Nike men red running shoe with mesh",
    "Roadster men blue cotton casual shirt",
    "Fossil black analog watch for women",
    "Puma unisex green baseball cap",
    "Adidas white ankle socks pack of three",
    "Lino Perros pink leather handbag",
]


def tiny_model(seed=0, num_keywords=KEYWORDS, **model_options) -> MakeModel:
    torch.manual_seed(seed)
    options = {"embed_dim": 32, "fusion_layers": 1, "fusion_heads": 2} | model_options
    return MakeModel(ModelConfig(**options), num_keywords=num_keywords, image_size=SIZE)


def make_batch(model: MakeModel, product_index=None, seed=0) -> dict[str, torch.Tensor]:
    n = len(QUERIES)
    generator = torch.Generator().manual_seed(seed)
    encoder = MakeEncoder(model)
    queries = encoder.tokenize_queries(QUERIES)
    titles = encoder.tokenize_titles(TITLES)
    pseudo = encoder.tokenize_queries([t.split()[1] + " " + t.split()[2] for t in TITLES])
    targets = torch.zeros(n, KEYWORDS)
    targets[torch.arange(n), torch.arange(n) % KEYWORDS] = 1.0
    return {
        "query_input_ids": queries["input_ids"],
        "query_attention_mask": queries["attention_mask"],
        "title_input_ids": titles["input_ids"],
        "title_attention_mask": titles["attention_mask"],
        "pixel_values": torch.randn(n, 3, SIZE, SIZE, generator=generator),
        "product_index": torch.arange(n) if product_index is None else product_index,
        "keyword_targets": targets,
        "pseudo_query_input_ids": pseudo["input_ids"],
        "pseudo_query_attention_mask": pseudo["attention_mask"],
    }


def product_inputs(batch):
    keys = ("title_input_ids", "title_attention_mask", "pixel_values")
    return {key: batch[key] for key in keys}


def colour_swatches(variants: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Garment-like patches of 8 colours on white, each with its own shape and texture."""
    colours = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.2, 0.9], [0.1, 0.7, 0.2], [0.95, 0.95, 0.95],
                            [0.05, 0.05, 0.05], [0.9, 0.8, 0.1], [0.6, 0.1, 0.6], [0.5, 0.5, 0.5]])
    generator = torch.Generator().manual_seed(seed)
    images, labels = [], []
    for label, rgb in enumerate(colours):
        for _ in range(variants):
            image = torch.ones(3, 64, 64)
            x, y = torch.randint(2, 26, (2,), generator=generator).tolist()
            w, h = torch.randint(20, 38, (2,), generator=generator).tolist()
            texture = 0.2 * torch.randn(1, h, w, generator=generator)
            image[:, y : y + h, x : x + w] = (rgb[:, None, None] + texture).clamp(0, 1)
            images.append(image)
            labels.append(label)
    return torch.stack(images), torch.tensor(labels)

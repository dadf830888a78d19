"""Products/s of one encoder process: what sizes a catalog encoding (docs/SCALE.md).

MAKE's product tower (title tower + image tower + fusion) with untrained weights
of a bundled config's architecture (speed does not depend on the weights),
over fashion-mini products with their images, as `makevl index build` runs it.

    python benchmarks/encode_throughput.py                          # demo-tiny, 256 products
    python benchmarks/encode_throughput.py --config demo-pretrained --products 64
    python benchmarks/encode_throughput.py --device cuda --products 4096
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="demo-tiny", help="bundled config name or YAML file")
    parser.add_argument("--products", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from makevl.config import DataConfig, resolve_config
    from makevl.data.shop import load_shop
    from makevl.keywords import build_vocabulary
    from makevl.models.inference import MakeEncoder
    from makevl.models.make import MakeModel

    torch.set_num_threads(args.threads)
    products = load_shop(DataConfig.model_validate({"preset": "fashion-mini"})).products
    cfg = resolve_config(args.config)
    vocabulary = build_vocabulary(products[:500])
    model = MakeModel.from_config(cfg, num_keywords=len(vocabulary)).eval().to(args.device)
    encoder = MakeEncoder(model)
    encoder.encode_products(products[:8], batch_size=8)  # warm up
    start = time.perf_counter()
    vectors, _, ids = encoder.encode_products(products[: args.products], batch_size=args.batch_size)
    seconds = time.perf_counter() - start
    print(
        f"{args.config}: {len(ids)} products in {seconds:.1f} s = {len(ids) / seconds:.1f} "
        f"products/s ({args.device}, {torch.get_num_threads()} threads, batch "
        f"{args.batch_size}, dim {vectors.shape[1]}, load average {os.getloadavg()[0]:.1f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

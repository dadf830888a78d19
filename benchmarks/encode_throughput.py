"""Products/s of catalog encoding, torch against the compiled product side, in one run.

MAKE's product side (title tower + image tower + fusion + MA) over fashion-mini
products with their images, as `makevl index build` runs it: the torch path
(in-process image decoding) and the ONNX Runtime path (the graph
`makevl index build` exports, images decoded in worker processes). For each:
products/s and the user/system CPU seconds (this process and its workers);
then the parity of the two: cosine of the product vectors and the top-10
overlap of the fashion-mini test queries over the encoded products.

    python benchmarks/encode_throughput.py --checkpoint runs/fashion-mini/best --products 3107
    python benchmarks/encode_throughput.py --config demo-tiny --products 256   # untrained
    python benchmarks/encode_throughput.py --default-malloc   # without the CLI's mallopt fix

Speed does not depend on the weights: an untrained bundled config costs the same.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def cpu_seconds() -> tuple[float, float]:
    """User and system CPU seconds of this process and its finished children."""
    own, children = (
        resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + children.ru_utime, own.ru_stime + children.ru_stime


def timed(encoder, products, batch_size: int):
    user, system = cpu_seconds()
    start = time.perf_counter()
    vectors, _weights, _ids = encoder.encode_products(products, batch_size=batch_size)
    seconds = time.perf_counter() - start
    user_after, system_after = cpu_seconds()
    return vectors, seconds, user_after - user, system_after - system


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", help="a trained checkpoint (default: untrained --config)")
    parser.add_argument("--config", default="fashion-mini", help="bundled config name or YAML file")
    parser.add_argument(
        "--products", type=int, default=512, help="fashion-mini products (max 3107)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-workers", type=int, default=1, help="for the ONNX path")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--default-malloc", action="store_true", help="skip the mallopt fix")
    args = parser.parse_args()

    import numpy as np
    import torch

    from makevl.cli import keep_freed_memory
    from makevl.config import DataConfig, resolve_config
    from makevl.data.shop import load_shop
    from makevl.index.product_runtime import OnnxProductEncoder, product_parity
    from makevl.models.export import export_product_towers
    from makevl.models.inference import MakeEncoder

    malloc = "default glibc malloc" if args.default_malloc else f"mallopt fix {keep_freed_memory()}"
    torch.set_num_threads(args.threads)
    shop = load_shop(DataConfig.model_validate({"preset": "fashion-mini"}))
    products = shop.products[: args.products]
    queries = list(shop.query_set("test").queries.values())
    if args.checkpoint:
        from makevl.models.checkpoint import load_checkpoint

        model, label = load_checkpoint(args.checkpoint)[0], f"checkpoint {args.checkpoint}"
    else:
        from makevl.keywords import build_vocabulary
        from makevl.models.make import MakeModel

        cfg = resolve_config(args.config)
        model = MakeModel.from_config(cfg, num_keywords=len(build_vocabulary(products[:500])))
        label = f"untrained {args.config}"
    model.eval()
    torch_encoder = MakeEncoder(model)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        path = export_product_towers(model, Path(folder) / "product_towers.onnx")
        export_seconds = time.perf_counter() - start
        onnx_encoder = OnnxProductEncoder(
            model, path, image_workers=args.image_workers, threads=args.threads
        )
        warm = products[:8]
        torch_encoder.encode_products(warm, batch_size=8)
        onnx_encoder.encode_products(warm, batch_size=8)
        results = {
            "torch": timed(torch_encoder, products, args.batch_size),
            f"onnx ({args.image_workers} image workers)": timed(
                onnx_encoder, products, args.batch_size
            ),
        }
    print(
        f"{label}: {len(products)} fashion-mini products, batch {args.batch_size}, "
        f"{args.threads} threads, {malloc}, load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'path':<26} {'seconds':>8} {'products/s':>11} {'user s':>8} {'sys s':>8}")
    for name, (_vectors, seconds, user, system) in results.items():
        rate = len(products) / seconds
        print(f"{name:<26} {seconds:8.1f} {rate:11.1f} {user:8.1f} {system:8.1f}")
    (reference, torch_s, _, _), (candidate, onnx_s, _, _) = results.values()
    query_vectors = torch_encoder.encode_queries(queries)
    parity = product_parity(reference, candidate, np.asarray(query_vectors))
    print(f"speed-up {torch_s / onnx_s:.2f}x; export {export_seconds:.1f} s (once per index)")
    print(
        f"parity: cosine min {parity.min_cosine:.6f} mean {parity.mean_cosine:.6f}; top-10 "
        f"overlap {parity.overlap:.4f} over {len(queries)} test queries"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

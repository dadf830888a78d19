"""Training throughput: samples/s and peak memory, side by side in one run.

Configurations: tiny backbones and the pretrained ones (MiniLM-L6 text towers,
EfficientNet-Lite0 image tower, frozen), each with and without the on-disk
cache of the frozen image tower, at batch 32 and 64. Every case runs in its own
process so its peak memory is its own; the cached cases reuse a cache filled
beforehand (the fill time is printed separately).

    python benchmarks/train_throughput.py            # CPU, all cases
    python benchmarks/train_throughput.py --quick    # fewer steps, batch 32 only
    python benchmarks/train_throughput.py --device cuda
    python benchmarks/train_throughput.py --bf16     # each cached case in bf16 too
    python benchmarks/train_throughput.py --bf16 --frozen-word-embeddings
        # ... and each cached case in bf16 with model.freeze_word_embeddings
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = {
    "tiny": ["model.text_backbone=tiny", "model.image_backbone=tiny", "data.image_size=64",
             "model.embed_dim=128", "model.freeze_image=true"],
    "pretrained": ["model.text_backbone=minilm", "model.image_backbone=efficientnet_lite0",
                   "data.image_size=224", "model.freeze_image=true", "train.backbone_lr=3e-5"],
}


def run_case(args: argparse.Namespace) -> None:
    """Child process: train a few steps and print one JSON line of figures."""
    import torch

    from makevl.config import load_config
    from makevl.training.trainer import train

    overrides = [
        "data.preset=demo", f"data.catalog={args.data}/catalog.csv",
        f"data.queries={args.data}/queries.csv", f"train.out_dir={args.out}",
        f"train.batch_size={args.batch}", f"train.max_steps={args.steps}", "train.epochs=100",
        "train.warmup_steps=2", "train.log_every=1000", "train.eval_every=100000",
        f"train.cache_frozen_features={str(args.cache).lower()}", f"train.device={args.device}",
        f"train.bf16={str(args.bf16).lower()}", *CASES[args.case],
        f"model.freeze_word_embeddings={str(args.frozen_word_embeddings).lower()}",
    ]
    cfg = load_config(None, overrides)
    start = time.perf_counter()
    result = train(cfg)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB
    peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0
    print(json.dumps({"samples_per_s": result.samples_per_s, "steps": result.step,
                      "wall_s": time.perf_counter() - start, "peak_rss_mib": peak_rss,
                      "peak_gpu_mib": peak_gpu}))


def child(case: str, batch: int, cache: bool, steps: int, data: Path, device: str,
          cache_dir: Path, bf16: bool = False, frozen_words: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as out:
        env = dict(os.environ, MAKEVL_CACHE_DIR=str(cache_dir), HF_HUB_OFFLINE="1")
        command = [sys.executable, __file__, "--child", "--case", case, "--batch", str(batch),
                   "--steps", str(steps), "--data", str(data), "--out", f"{out}/run",
                   "--device", device] + (["--cache"] if cache else []) + (["--bf16"] if bf16 else [])
        command += ["--frozen-word-embeddings"] if frozen_words else []
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode:
            raise SystemExit(f"case {case} batch {batch} cache {cache} failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--products", type=int, default=400)
    parser.add_argument("--bf16", action="store_true",
                        help="also run each cached case with bf16 autocast (train.bf16=true)")
    parser.add_argument("--frozen-word-embeddings", action="store_true",
                        help="also run each cached case with model.freeze_word_embeddings "
                             "(in bf16 with --bf16)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--case", default="tiny", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=32, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=10, help=argparse.SUPPRESS)
    parser.add_argument("--cache", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_case(args)
        return

    from makevl.data.demo import make_demo_shop

    batches = [32] if args.quick else [32, 64]
    steps = {"tiny": 10 if args.quick else 30, "pretrained": 4 if args.quick else 10}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "demo"
        make_demo_shop(data, n_products=args.products, seed=0)
        print(f"device {args.device}, {os.cpu_count()} CPU cores, demo shop of {args.products} "
              "products, image tower frozen in every case")
        print(f"{'case':<11} {'batch':>5} {'cache':>6} {'bf16':>5} {'words':>6} {'steps':>5} "
              f"{'samples/s':>10} {'peak RSS MiB':>12} {'peak GPU MiB':>12}")
        for case in CASES:
            cache_dir = Path(tmp) / f"cache-{case}"
            start = time.perf_counter()
            child(case, batches[0], True, 1, data, args.device, cache_dir)  # fills the cache
            print(f"{case}: cache filled in {time.perf_counter() - start:.1f} s "
                  "(one 1-step run, model load included)")
            for batch in batches:
                figures = {}
                runs = [(False, False, False), (True, False, False)]  # (cache, bf16, frozen words)
                runs += [(True, True, False)] if args.bf16 else []
                runs += [(True, args.bf16, True)] if args.frozen_word_embeddings else []
                for cache, bf16, frozen in runs:
                    r = child(case, batch, cache, steps[case], data, args.device, cache_dir, bf16,
                              frozen)
                    figures[cache, bf16, frozen] = r["samples_per_s"]
                    print(f"{case:<11} {batch:>5} {'yes' if cache else 'no':>6} "
                          f"{'yes' if bf16 else 'no':>5} {'frozen' if frozen else 'train':>6} "
                          f"{r['steps']:>5} {r['samples_per_s']:>10.1f} "
                          f"{r['peak_rss_mib']:>12.0f} {r['peak_gpu_mib']:>12.0f}")
                cached = figures[True, False, False]
                speed_ups = [f"cache speed-up x{cached / figures[False, False, False]:.2f}"]
                if args.bf16:
                    bf16_cached = figures[True, True, False]
                    speed_ups.append(f"bf16 speed-up (cached) x{bf16_cached / cached:.2f}")
                if args.frozen_word_embeddings:
                    trained = figures[True, args.bf16, False]
                    speed_ups.append("frozen word embeddings speed-up (cached"
                                     f"{', bf16' if args.bf16 else ''}) "
                                     f"x{figures[True, args.bf16, True] / trained:.2f}")
                print(f"{case:<11} {batch:>5}  " + ", ".join(speed_ups))


if __name__ == "__main__":
    main()

"""Fit the sharpness of Modal Adaptation's weights on the validation split.

MA's gate learns on training pairs, and there it learns to trust the fused
branch most: the one with trainable fusion layers over title and image tokens,
which fits the training products best. On products it has not seen, a softer
mix of the three branches ranks better (fashion-mini, sparse titles, four val
checkpoints: NDCG@10 +0.005 to +0.013 at temperature 4 over 1; docs/RESULTS.md).
So at each validation, as temperature scaling calibrates a classifier on
held-out data (Guo et al., "On Calibration of Modern Neural Networks", ICML
2017), the gate's logits are divided by the temperature that gives the best val
NDCG@10; the last validation's is saved with the weights.
Training itself always uses the raw gate; the temperature applies in eval mode.
The grid stops at 8, so the per-product weights still differ (equal weights are
the ``no-ma-equal`` ablation, not a calibration result).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from makevl.data.shop import QuerySet
from makevl.evaluation.metrics import NDCG_DEPTH, mean_metrics
from makevl.models.inference import MakeEncoder, OnError
from makevl.models.make import BRANCHES, MakeModel

GATE_TEMPERATURES = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)


@dataclass
class GateCalibration:
    temperature: float  # the one chosen, now model.gate_temperature
    ndcg: dict[float, float]  # val NDCG@10 at each temperature tried
    recall: float  # val Recall@10 at the chosen temperature (what validation logs)


def calibrate_gate(
    model: MakeModel,
    query_set: QuerySet,
    temperatures: tuple[float, ...] = GATE_TEMPERATURES,
    on_error: OnError | None = None,
) -> GateCalibration:
    """Set ``model.gate_temperature`` to the one with the best val NDCG@10, the lowest
    on ties. Needs a gate, queries and products; products are encoded once."""
    if model.gate is None:
        raise ValueError("calibrate_gate: the model has no Modal Adaptation gate")
    if not query_set.queries or not query_set.pool:
        raise ValueError("calibrate_gate: the validation split has no queries or products")
    encoder = MakeEncoder(model)
    qids = list(query_set.queries)
    queries = encoder.encode_queries([query_set.queries[q] for q in qids])
    qrels = [query_set.qrels[qid] for qid in qids]
    arrays = encoder.encode_branches(query_set.pool, on_error=on_error)
    ids = [product.id for product in query_set.pool]
    stacked = torch.from_numpy(np.stack([arrays[b] for b in BRANCHES], axis=1))  # [N, 3, d]
    was_training = model.training
    model.eval()
    metrics: dict[float, dict[str, float]] = {}
    try:
        for temperature in temperatures:  # the model's own mix, as eval mode ranks with it
            model.gate_temperature.fill_(temperature)
            with torch.no_grad():
                products, _ = model.mix_branches(stacked.to(model.device))
            metrics[temperature] = mean_metrics(
                queries, products.float().cpu().numpy(), ids, qrels, NDCG_DEPTH
            )
    finally:
        model.train(was_training)
    ndcg = {t: m[f"ndcg@{NDCG_DEPTH}"] for t, m in metrics.items()}
    best = max(temperatures, key=lambda t: (ndcg[t], -t))
    model.gate_temperature.fill_(best)
    return GateCalibration(best, ndcg, metrics[best][f"recall@{NDCG_DEPTH}"])

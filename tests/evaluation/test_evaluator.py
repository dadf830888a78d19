import csv
import json

import numpy as np
import pytest

from makevl.cli import main
from makevl.data.catalog import Product
from makevl.data.shop import QuerySet
from makevl.evaluation.evaluator import EmbeddingSystem, RetrievalEvaluator, comparison_table

CATEGORIES = ["shoes", "shoes", "shoes", "bags", "bags", "bags", "hats", "hats", "hats", "hats"]


def tiny_query_set() -> QuerySet:
    pool = [
        Product(f"p{i}", f"{cat} number {i}", None, {"category": cat})
        for i, cat in enumerate(CATEGORIES)
    ]
    queries = {"q0": "shoes", "q1": "bags", "q2": "hats", "q3": "red hats", "q4": "nothing"}
    qrels = {
        "q0": {"p0": 1.0, "p1": 1.0, "p2": 1.0},
        "q1": {"p3": 2.0, "p4": 1.0},
        "q2": {"p6": 1.0, "p7": 1.0, "p8": 1.0, "p9": 1.0},
        "q3": {"p9": 1.0, "p5": 1.0, "p8": 1.0},  # majority hats
        "q4": {"gone": 1.0},  # only a product outside the pool: skipped
    }
    return QuerySet(queries, qrels, pool)


class OracleSystem:
    """Relevant products first (by grade), then the rest; ``reverse`` flips the list."""

    def __init__(self, query_set: QuerySet, reverse: bool = False):
        self.name = "reversed" if reverse else "perfect"
        self.by_text = {text: query_set.qrels[qid] for qid, text in query_set.queries.items()}
        self.reverse = reverse

    def rank(self, queries, pool, k):
        out = []
        for text in queries:
            qrels = self.by_text[text]
            order = sorted(pool, key=lambda p: -qrels.get(p.id, 0.0))
            ids = [p.id for p in order]
            out.append((ids[::-1] if self.reverse else ids)[:k])
        return out


def test_perfect_system_scores_one_and_reversed_lower():
    query_set = tiny_query_set()
    evaluator = RetrievalEvaluator(query_set, ks=(1, 5, 10), bootstrap=200)
    perfect = evaluator.evaluate(OracleSystem(query_set))
    reversed_ = evaluator.evaluate(OracleSystem(query_set, reverse=True))
    for name in ("recall@10", "ndcg@10", "mrr@10", "map@100", "hit@1"):
        assert perfect.metrics[name] == pytest.approx(1.0)
    assert perfect.metrics["recall@1"] < 1.0  # q0 has 3 relevant products, only 1 fits
    for name in ("recall@1", "recall@5", "ndcg@10", "mrr@10", "map@100"):
        assert reversed_.metrics[name] < perfect.metrics[name]
    assert perfect.n_queries == 4
    assert perfect.skipped_queries == ["q4"]
    assert perfect.judgements_outside_pool == 1
    assert perfect.pool_size == 10
    low, high = reversed_.ci["ndcg@10"]
    assert low <= reversed_.metrics["ndcg@10"] <= high


def test_per_category_breakdown_sums_to_overall():
    query_set = tiny_query_set()
    evaluator = RetrievalEvaluator(
        query_set, ks=(1, 5), category_attribute="category", bootstrap=50
    )
    result = evaluator.evaluate(OracleSystem(query_set, reverse=True))
    table = result.per_category
    assert {c: row["queries"] for c, row in table.items()} == {"hats": 2, "bags": 1, "shoes": 1}
    assert sum(row["queries"] for row in table.values()) == result.n_queries
    for name in ("recall@5", "ndcg@10"):
        weighted = sum(row["queries"] * row[name] for row in table.values()) / result.n_queries
        assert weighted == pytest.approx(result.metrics[name])
    assert [row["category"] for row in result.per_query] == ["shoes", "bags", "hats", "hats"]


def test_unknown_category_attribute_is_an_error():
    with pytest.raises(ValueError, match="'colour' is on no product.*category"):
        RetrievalEvaluator(tiny_query_set(), category_attribute="colour")


def test_duplicate_pool_ids_are_an_error():
    query_set = tiny_query_set()
    query_set.pool.append(Product("p1", "again", None))
    with pytest.raises(ValueError, match="'p1' twice"):
        RetrievalEvaluator(query_set)


def test_outputs_json_table_and_per_query_file(tmp_path):
    query_set = tiny_query_set()
    result = RetrievalEvaluator(query_set, category_attribute="category", bootstrap=50).evaluate(
        OracleSystem(query_set)
    )
    payload = json.loads(result.to_json())
    assert payload["system"] == "perfect"
    assert payload["metrics"]["ndcg@10"] == pytest.approx(1.0)
    assert len(payload["ci"]["recall@10"]) == 2
    assert "per_query" not in payload
    path = tmp_path / "per_query.jsonl"
    result.save_per_query(path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["qid"] for r in rows] == ["q0", "q1", "q2", "q3"]
    assert rows[1]["top10"][:2] == ["p3", "p4"]
    assert rows[1]["metrics"]["ndcg@10"] == pytest.approx(1.0)
    text = result.to_table()
    assert "perfect" in text and "ndcg@10" in text and "hats" in text
    assert "perfect" in comparison_table([result, result])


def one_hot_encoders():
    """Query 'category' -> one-hot on its category; product -> its category's axis."""
    axes = {"shoes": 0, "bags": 1, "hats": 2}

    def encode_queries(texts):
        out = np.zeros((len(texts), 3), dtype=np.float32)
        for row, text in enumerate(texts):
            for word, axis in axes.items():
                if word in text:
                    out[row, axis] = 1.0
        return out

    def encode_products(products):
        vectors = np.zeros((len(products), 3), dtype=np.float32)
        for row, p in enumerate(products):
            vectors[row, axes[p.attributes["category"]]] = 1.0
        return vectors, np.full((len(products), 3), 1 / 3), [p.id for p in products]

    return encode_queries, encode_products


def test_embedding_system_scores_vectors_and_keeps_modality_weights():
    query_set = tiny_query_set()
    evaluator = RetrievalEvaluator(query_set, ks=(1, 5), bootstrap=50)
    encode_queries, encode_products = one_hot_encoders()
    system = EmbeddingSystem("one-hot", encode_queries, encode_products)
    result = evaluator.evaluate(system)
    assert system.modality_weights.shape == (10, 3)
    assert result.metrics["recall@5"] == pytest.approx((1 + 1 + 1 + 2 / 3) / 4)


def test_embedding_system_checks_shapes():
    system = EmbeddingSystem("broken", lambda t: np.zeros((len(t), 3)), lambda p: np.zeros((2, 3)))
    with pytest.raises(ValueError, match="2 product vectors for 10 products"):
        RetrievalEvaluator(tiny_query_set(), bootstrap=10).evaluate(system)


def write_custom_shop(folder):
    with (folder / "catalog.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "title", "category"])
        for i in range(40):
            kind = ["red running shoes", "leather handbag", "wool winter hat", "steel watch"][i % 4]
            writer.writerow([f"p{i}", f"{kind} model {i}", kind.split()[-1]])
    with (folder / "queries.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["query", "product_id"])
        for i in range(40):
            kind = ["running shoes", "handbag", "winter hat", "watch"][i % 4]
            writer.writerow([kind, f"p{i}"])


def test_cli_eval_bm25_json(tmp_path, capsys):
    write_custom_shop(tmp_path)
    per_query = tmp_path / "pq.jsonl"
    code = main(
        [
            "eval",
            "--system",
            "bm25",
            "--preset",
            "custom",
            "--split",
            "train",
            "--json",
            "--category-attribute",
            "category",
            "--bootstrap",
            "100",
            "--per-query",
            str(per_query),
            f"data.catalog={tmp_path / 'catalog.csv'}",
            f"data.queries={tmp_path / 'queries.csv'}",
        ]
    )
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["system"] == "bm25"
    assert payload["n_queries"] == 4
    assert payload["meta"]["split"] == "train"
    # Every query names words only its own kind of product has in its title.
    assert payload["metrics"]["ndcg@10"] == pytest.approx(1.0)
    assert set(payload["per_category"]) == {"shoes", "handbag", "hat", "watch"}
    assert len(per_query.read_text().splitlines()) == 4


def test_cli_eval_checkpoint_needs_a_path(capsys):
    assert main(["eval", "--system", "checkpoint"]) == 2
    assert "--checkpoint" in capsys.readouterr().err


def test_eval_config_precedence(tmp_path):
    from makevl.config import RunConfig
    from makevl.evaluation.run_eval import eval_config

    trained_with = RunConfig()
    trained_with.data.split_seed = 5
    config_file = tmp_path / "run.yaml"
    config_file.write_text("data:\n  preset: fashion-mini\n  val_fraction: 0.3\n")
    cfg = eval_config(
        trained_with,
        config=str(config_file),
        sparse_titles=True,
        overrides=["data.val_fraction=0.2"],
        unseen_phrasing=True,
    )
    assert cfg.data.split_seed == 5  # the checkpoint's split survives
    assert cfg.data.preset == "fashion-mini"  # the file overrides the checkpoint
    assert cfg.data.sparse_titles is True
    assert cfg.data.unseen_phrasing is True
    assert cfg.data.val_fraction == 0.2  # dotted overrides win last


def test_eval_scores_a_checkpoint_as_its_exported_index_serves_it(tmp_path, capsys):
    """`makevl eval --runtime`: product towers and query side through ONNX Runtime, scored
    like torch (issue #9: served quality within 0.01 NDCG@10 of torch)."""
    pytest.importorskip("onnxruntime")
    from index.test_checkpoint_index import save_tiny_checkpoint
    from makevl.evaluation.run_eval import _load_checkpoint
    from makevl.index.product_runtime import ServedEncoder

    write_custom_shop(tmp_path)
    catalog, queries = tmp_path / "catalog.csv", tmp_path / "queries.csv"
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt", catalog, seed=0)
    args = ["eval", "--system", "checkpoint", "--checkpoint", str(checkpoint), "--preset",
            "custom", "--split", "train", "--json", "--bootstrap", "10",
            "--category-attribute", "none", f"data.catalog={catalog}", f"data.queries={queries}"]  # fmt: skip
    scores = {}
    for runtime in ("torch", "onnx", "onnx-int8"):
        assert main([*args, "--runtime", runtime]) == 0
        payload = json.loads(capsys.readouterr().out)
        scores[payload["meta"]["runtime"]] = payload["metrics"]["ndcg@10"]
    assert set(scores) == {"torch", "onnx-fp32", "onnx-int8"}
    assert abs(scores["onnx-fp32"] - scores["torch"]) <= 0.01
    assert abs(scores["onnx-int8"] - scores["torch"]) <= 0.05

    torch_encoder, _cfg = _load_checkpoint(str(checkpoint))
    texts = ["running shoes", "a red leather handbag"]
    reference = torch_encoder.encode_queries(texts)
    for runtime, tolerance in (("onnx-fp32", 1e-4), ("onnx-int8", 0.05)):
        folder = tmp_path / runtime
        folder.mkdir()
        served = ServedEncoder(torch_encoder, runtime, folder)
        vectors = served.encode_queries(texts)
        np.testing.assert_allclose(vectors, reference, atol=tolerance)
        assert (folder / "product_towers.onnx").is_file()
    assert not np.allclose(vectors, reference, atol=1e-6)  # int8 really ran
    bm25 = ["eval", "--system", "bm25", "--preset", "custom", "--runtime", "onnx",
            f"data.catalog={catalog}", f"data.queries={queries}"]  # fmt: skip
    assert main(bm25) == 2  # nothing to serve
    assert "needs a system with a checkpoint" in capsys.readouterr().err

import numpy as np
import pytest

from makevl.config import DataConfig
from makevl.data.catalog import Product
from makevl.data.shop import fashion_mini_dir, load_shop
from makevl.data.text import bm25_tokens
from makevl.evaluation.baselines import (
    BM25System,
    StaticFusionSystem,
    ZeroShotMiniLMSystem,
    static_fusion_grid,
)
from makevl.evaluation.evaluator import RetrievalEvaluator

TITLES = [
    "Nike Men Red Running Shoes",
    "Puma Women Black Leather Handbag",
    "Casio Men Steel Analog Watch",
    "Levis Men Blue Slim Fit Jeans",
    "Adidas Unisex Grey Wool Beanie",
    "",  # an empty title must not break indexing
]
POOL = [Product(f"p{i}", title, None) for i, title in enumerate(TITLES)]


def test_bm25_tokens_lowercase_and_do_not_stem():
    assert bm25_tokens("Men's RUNNING-Shoes, size 9") == [
        "men",
        "s",
        "running",
        "shoes",
        "size",
        "9",
    ]


def test_bm25_ranks_exact_title_first():
    system = BM25System()
    rankings = system.rank([TITLES[2], TITLES[3], "leather handbag"], POOL, k=3)
    assert [r[0] for r in rankings] == ["p2", "p3", "p1"]
    assert all(len(r) == 3 for r in rankings)


def test_bm25_query_without_known_words_keeps_pool_order():
    assert BM25System().rank(["zzz qqq", ""], POOL, k=10) == [[p.id for p in POOL]] * 2


@pytest.fixture(scope="module")
def minilm():
    return ZeroShotMiniLMSystem()


@pytest.mark.slow  # loading transformers + the model takes ~5 s on 2 cores
def test_minilm_ranks_red_running_shoes_first(minilm):
    ranking = minilm.rank(["red running shoes"], POOL, k=6)[0]
    assert ranking[0] == "p0"


@pytest.mark.slow
def test_minilm_vectors_are_unit_norm_and_order_independent(minilm):
    texts = ["a much longer product title about shoes and more", "hat", "leather bag"]
    vectors = minilm.encoder.encode(texts)
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Length-sorted batching must not mix up rows.
    single = np.concatenate([minilm.encoder.encode([t]) for t in texts])
    assert np.allclose(vectors, single, atol=1e-5)


def fusion_encoders():
    """Title vectors point p0 at the query, image vectors point p1 at it."""
    calls = {"titles": 0, "images": 0}
    query = np.array([[1.0, 0.0, 0.0]])

    def encode_queries(texts):
        return np.repeat(query, len(texts), axis=0)

    def encode_titles(titles):
        calls["titles"] += 1
        out = np.tile([0.0, 0.0, 1.0], (len(titles), 1))
        out[0] = [1.0, 1.0, 0.0]  # p0's title matches (cosine 0.71)
        return out

    def encode_images(products):
        calls["images"] += 1
        out = np.tile([0.0, 0.0, 1.0], (len(products), 1))
        out[1] = [3.0, 0.0, 0.0]  # p1's image matches (cosine 1 after normalising)
        return out

    return encode_queries, encode_titles, encode_images, calls


def test_static_fusion_weights_decide_which_modality_wins():
    encode_queries, encode_titles, encode_images, _ = fusion_encoders()
    title_heavy = StaticFusionSystem(encode_queries, encode_titles, encode_images, (0.9, 0.1))
    image_heavy = StaticFusionSystem(encode_queries, encode_titles, encode_images, (0.1, 0.9))
    assert title_heavy.rank(["q"], POOL, k=2)[0] == ["p0", "p1"]
    assert image_heavy.rank(["q"], POOL, k=2)[0] == ["p1", "p0"]
    fused = title_heavy.fuse(POOL)
    assert np.allclose(np.linalg.norm(fused, axis=1), 1.0)


def test_static_fusion_grid_encodes_pool_once():
    encode_queries, encode_titles, encode_images, calls = fusion_encoders()
    grid = static_fusion_grid(encode_queries, encode_titles, encode_images)
    assert [s.weights for s in grid] == [(0.25, 0.75), (0.5, 0.5), (0.75, 0.25)]
    assert grid[0].name == "static-fusion(title=0.25,image=0.75)"
    firsts = [s.rank(["q"], POOL, k=1)[0][0] for s in grid]
    assert firsts == ["p1", "p1", "p0"]
    assert calls == {"titles": 1, "images": 1}


class ShuffledSystem:
    name = "random"

    def rank(self, queries, pool, k):
        rng = np.random.default_rng(0)
        return [[pool[i].id for i in rng.permutation(len(pool))[:k]] for _ in queries]


@pytest.mark.skipif(
    not (fashion_mini_dir() / "styles.csv").is_file(), reason="fashion-mini not available"
)
def test_bm25_on_fashion_mini_beats_random_order():
    query_set = load_shop(DataConfig(preset="fashion-mini")).query_set("test")
    evaluator = RetrievalEvaluator(query_set, ks=(10,), bootstrap=200)
    bm25 = evaluator.evaluate(BM25System())
    chance = evaluator.evaluate(ShuffledSystem())
    assert bm25.n_queries > 100
    assert bm25.ci["ndcg@10"][0] > chance.ci["ndcg@10"][1]  # CIs do not overlap
    assert bm25.metrics["recall@10"] > 3 * chance.metrics["recall@10"]


def test_hybrid_system_fuses_the_vector_ranking_with_bm25_over_titles_and_keywords():
    from makevl.evaluation.baselines import HybridSystem
    from makevl.evaluation.systems import SYSTEMS
    from makevl.index.lexical import Fusion

    class FixedOrder:  # a vector system that ranks the pool backwards
        name = "backwards"

        def rank(self, queries, pool, k):
            return [[p.id for p in reversed(pool)][:k] for _ in queries]

    pool = [*POOL, Product("kw", "Wool hat", None, keywords=["casio"])]
    hybrid = HybridSystem(FixedOrder(), Fusion(rrf_k=1))
    # "casio": BM25 finds p2 (title) and kw (keyword); kw is also the vector channel's first
    assert hybrid.rank(["casio"], pool, k=3)[0] == ["kw", "p2", "p5"]
    lexical_only = HybridSystem(FixedOrder(), Fusion(vector_weight=0))
    assert lexical_only.rank(["casio watch"], pool, k=3)[0] == ["p2", "kw"]
    assert SYSTEMS["hybrid"].needs_model and SYSTEMS["hybrid"].in_report
    # BM25 reads the query as the spelling corrector leaves it, as in the index
    from makevl.spelling import build_spelling

    corrected = HybridSystem(FixedOrder(), Fusion(vector_weight=0), spelling=build_spelling(pool, []))
    assert lexical_only.rank(["cassio"], pool, k=3)[0] == []
    assert corrected.rank(["cassio"], pool, k=3)[0] == lexical_only.rank(["casio"], pool, k=3)[0]
    assert sorted(corrected.rank(["cassio"], pool, k=3)[0]) == ["kw", "p2"]

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from makevl.index.search import Searcher
from makevl.serving.app import MAX_BATCH, STATIC_DIR, create_app
from makevl.serving.metrics import Metrics
from serving.serving_testing import NO_SHEDDING


@pytest.fixture(scope="module")
def client(served_index):
    with TestClient(
        create_app(served_index, batching=NO_SHEDDING), raise_server_exceptions=False
    ) as c:
        yield c


def test_search(client):
    response = client.get("/search", params={"q": "  red t-shirt ", "k": 3})
    assert response.status_code == 200
    body = response.json()
    assert body["query"] == "red t-shirt" and body["k"] == 3 and body["took_ms"] >= 0
    first = body["results"][0]
    assert first["id"] == "p1" and first["title"] == "Red cotton t-shirt for men"
    assert first["image_url"] == "/products/p1/image"
    assert sum(first["modality_weights"].values()) == pytest.approx(1.0, abs=1e-5)
    assert first["attributes"] == {"category": "tshirt"}
    assert len(body["results"]) == 3


def test_batch_search_matches_single(client):
    queries = ["red t-shirt", "blue enamel badge", "wrist watch"]
    response = client.post("/search", json={"queries": queries, "k": 2})
    assert response.status_code == 200
    batch = response.json()["results"]
    assert len(batch) == 3
    for query, results in zip(queries, batch):
        single = client.get("/search", params={"q": query, "k": 2}).json()["results"]
        assert [r["id"] for r in results] == [r["id"] for r in single]
    assert batch[1][0]["id"] == "b1"


def test_product_and_image(client, served_index):
    product = client.get("/products/p3").json()
    assert product["title"] == "Green running shoes lightweight"
    image = client.get(product["image_url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content == Path(Searcher(served_index).image("p3")).read_bytes()

    embedded = client.get("/products/b1/image")
    assert embedded.status_code == 200 and embedded.headers["content-type"] == "image/png"
    assert embedded.content.startswith(b"\x89PNG")

    missing = client.get("/products/nope")
    assert missing.status_code == 404 and "no product 'nope'" in missing.json()["detail"]
    no_image = client.get("/products/n1/image")
    assert no_image.status_code == 404 and "has no image" in no_image.json()["detail"]
    assert client.get("/products/n1").json()["image_url"] is None


TRAVERSALS = [
    "/products/..%2F..%2Fetc%2Fpasswd/image",
    "/products/%2e%2e%2f%2e%2e%2fetc%2fpasswd/image",
    "/products/..%252F..%252Fetc%252Fpasswd/image",
    "/products/%2Fetc%2Fpasswd/image",
    "/products/..%5C..%5Cetc%5Cpasswd/image",
    "/products/../../etc/passwd/image",
    "/products/p1/../../../../etc/passwd",
    "/products/%00/image",
    "/static/../../../../etc/passwd",
    "/static/..%2F..%2F..%2Fetc%2Fpasswd",
    "/static/%2e%2e/%2e%2e/serving/app.py",
]


@pytest.mark.parametrize("url", TRAVERSALS)
def test_path_traversal_is_refused(client, url):
    response = client.get(url)
    assert response.status_code in (404, 422), response.text
    assert b"root:" not in response.content
    assert b"create_app" not in response.content


def test_product_id_that_looks_like_a_path_is_just_an_id(client):
    """The id "../../etc/passwd" is looked up in the index, never opened as a file."""
    response = client.get("/products/..%2F..%2Fetc%2Fpasswd")
    assert response.status_code == 200 and response.json()["title"] == "Oddly named product"
    image = client.get("/products/..%2F..%2Fetc%2Fpasswd/image")
    assert image.status_code == 404 and "has no image" in image.json()["detail"]


def test_ids_with_slashes_work(client):
    hit = client.get("/search", params={"q": "glass vase", "k": 1}).json()["results"][0]
    assert hit["id"] == "sku/42" and hit["image_url"] == "/products/sku%2F42/image"
    assert client.get(hit["image_url"]).content.startswith(b"\x89PNG")
    assert client.get("/products/sku/42").json()["title"] == "Green glass vase"


BAD_GETS = [
    ({"q": "x" * 10_000}, "10000 characters long; the limit is 256"),
    ({"q": "x", "k": -1}, "'k'"),
    ({"q": "x", "k": 0}, "greater than or equal to 1"),
    ({"q": "x", "k": 101}, "less than or equal to 100"),
    ({"q": "x", "k": "abc"}, "valid integer"),
    ({"q": "x", "k": "1.5"}, "valid integer"),
    ({"q": "x", "k": ""}, "'k'"),
    ({"q": "x", "k": "9" * 40}, "'k'"),
    ({}, "'q': Field required"),
    ({"k": 5}, "'q': Field required"),
    ({"q": ""}, "query is empty"),
    ({"q": "   \t\n "}, "query is empty"),
    ({"q": "\u3000\u2003"}, "query is empty"),
]


@pytest.mark.parametrize(("params", "message"), BAD_GETS)
def test_bad_get_parameters_get_422_with_a_message(client, params, message):
    response = client.get("/search", params=params)
    assert response.status_code == 422
    assert message in response.json()["detail"]


BAD_POSTS = [
    ({}, "body.queries: Field required"),
    ({"queries": []}, "at least 1 item"),
    ({"queries": ["ok"] * (MAX_BATCH + 1)}, f"at most {MAX_BATCH} items"),
    ({"queries": "red"}, "valid list"),
    ({"queries": [1]}, "body.queries[0]"),
    ({"queries": [None]}, "body.queries[0]"),
    ({"queries": ["ok", "  "]}, "body.queries[1]: query is empty"),
    ({"queries": ["x" * 300]}, "300 characters long"),
    ({"queries": ["ok"], "k": 0}, "body.k"),
    ({"queries": ["ok"], "k": "many"}, "body.k"),
    ({"queries": ["ok"], "mode": "fast"}, "body.mode"),
    ([["ok"]], "body"),
]


@pytest.mark.parametrize(("body", "message"), BAD_POSTS)
def test_bad_batch_bodies_get_422_with_a_message(client, body, message):
    response = client.post("/search", json=body)
    assert response.status_code == 422
    assert message in response.json()["detail"]


def test_malformed_json_gets_422(client):
    for content in (b"{bad", b"", b"\xff\xfe", b'{"queries": ["a"'):
        response = client.post(
            "/search", content=content, headers={"content-type": "application/json"}
        )
        assert response.status_code == 422, content
        assert response.json()["detail"]


UNICODE = ["红色 T恤", "👗 dress", "café crème", "فستان أحمر", "x\u0000y", "Ω" * 256, "e\u0301"]


@pytest.mark.parametrize("query", UNICODE)
def test_unicode_queries_are_fine(client, query):
    response = client.get("/search", params={"q": query, "k": 2})
    assert response.status_code == 200
    assert response.json()["query"] == query.strip()


@pytest.mark.parametrize("query", ["\x85", "\x1c", " \x1f "])
def test_what_the_schema_calls_text_is_searched(client, query):
    # The schema's pattern \S is an ECMAScript regex: NEL and the separators \x1c-\x1f
    # are not white space there, so a query made of them is valid and must not get 422.
    response = client.post("/search", json={"queries": [query]})
    assert response.status_code == 200, response.json()


@pytest.mark.parametrize("query", ["\u3000", " \u00a0\t", "\u2028"])
def test_what_the_schema_calls_blank_is_refused(client, query):
    response = client.post("/search", json={"queries": [query]})
    assert response.status_code == 422
    assert "empty" in response.json()["detail"]


def test_fuzz_never_500(client):
    """A spread of odd requests: none may crash the server."""
    urls = [
        "/search?q=%ff%fe",
        "/search?q=%",
        "/search?q=a&q=b&k=1&k=2",
        "/search?k=1e309&q=x",
        "/search?q[]=x",
        "/search?q=x&k=NaN",
        "/search?q=x&k=%00",
        "/products/",
        "/products/%",
        "/products/" + "a" * 600,
        "/products/" + "a" * 600 + "/image",
        "/products/%ff/image",
        "/metrics?x=1",
        "/healthz/..",
        "/search/",
        "/static/",
        "/static/nope.js",
        "/%2e%2e",
    ]
    for url in urls:
        assert client.get(url).status_code < 500, url
    for method in ("put", "delete", "patch"):
        assert getattr(client, method)("/search").status_code == 405
    assert (
        client.post(
            "/search", content=b"x" * 100_000, headers={"content-type": "application/json"}
        ).status_code
        == 422
    )


def test_healthz_and_metrics(client):
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["products"] == 16 and health["dim"] == 32
    client.get("/search", params={"q": "badge"})
    client.get("/search", params={"k": "bad"})
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    ok = re.search(
        r'makevl_requests_total\{method="GET",route="/search",status="200"\} (\d+)', text
    )
    bad = re.search(
        r'makevl_requests_total\{method="GET",route="/search",status="422"\} (\d+)', text
    )
    assert ok and int(ok.group(1)) >= 1 and bad and int(bad.group(1)) >= 1
    count = re.search(r'makevl_request_duration_seconds_count\{route="/search"\} (\d+)', text)
    inf = re.search(
        r'makevl_request_duration_seconds_bucket\{route="/search",le="\+Inf"\} (\d+)', text
    )
    assert count.group(1) == inf.group(1)
    assert "makevl_index_products 16" in text


def test_metrics_histogram_is_cumulative():
    metrics = Metrics()
    for seconds in (0.0005, 0.003, 0.003, 0.2, 30.0):
        metrics.observe("GET", "/search", 200, seconds)
    text = metrics.render()
    assert 'makevl_request_duration_seconds_bucket{route="/search",le="0.001"} 1' in text
    assert 'makevl_request_duration_seconds_bucket{route="/search",le="0.005"} 3' in text
    assert 'makevl_request_duration_seconds_bucket{route="/search",le="0.25"} 4' in text
    assert 'makevl_request_duration_seconds_bucket{route="/search",le="10.0"} 4' in text
    assert 'makevl_request_duration_seconds_bucket{route="/search",le="+Inf"} 5' in text
    assert 'makevl_requests_total{method="GET",route="/search",status="200"} 5' in text


def test_web_page_and_assets_are_local(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="search-form"' in page.text and "/static/app.js" in page.text
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200
    for path in STATIC_DIR.iterdir():  # no CDN, nothing from the internet
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", path.read_text()), path.name


def test_app_over_a_ready_searcher(served_index):
    searcher = Searcher(served_index)
    with TestClient(create_app(searcher, batching=NO_SHEDDING)) as c:
        assert c.get("/search", params={"q": "watch", "k": 1}).json()["results"][0]["id"] == "p12"


def test_filters_restrict_results_and_unknown_attributes_get_422(client):
    params = [
        ("q", "green shoes"),
        ("k", 5),
        ("filter", "category:shoes"),
        ("filter", "category:bag"),
    ]
    body = client.get("/search", params=params).json()
    assert body["filters"] == {"category": ["shoes", "bag"]} and body["mode"] == "vector"
    assert sorted(r["id"] for r in body["results"]) == ["p3", "p4", "p6"]  # all that match
    batch = client.post("/search", json={"queries": ["shoes"], "filter": ["category:bag"]}).json()
    assert [r["id"] for r in batch["results"][0]] == ["p4"]

    unknown = client.get("/search", params={"q": "shoes", "filter": "colour:red"})
    assert unknown.status_code == 422
    assert unknown.json()["errors"] == [
        {
            "where": "query parameter 'filter'",
            "msg": "unknown filter attribute 'colour'; the products of this index have 'category'",
        }
    ]
    malformed = client.post("/search", json={"queries": ["shoes"], "filter": ["category"]})
    assert malformed.status_code == 422 and "ATTRIBUTE:VALUE" in malformed.json()["detail"]
    schema = client.get("/openapi.json").json()
    assert (
        schema["components"]["schemas"]["BatchSearch"]["properties"]["filter"]["items"]["pattern"]
        == "^(category):"
    )  # the index's own attributes


def test_facets_list_attribute_values_by_count(client):
    facets = client.get("/facets", params={"top": 2}).json()["facets"]
    assert facets == [
        {
            "attribute": "category",
            "values": [{"value": "shoes", "count": 2}, {"value": "bag", "count": 1}],
        }
    ]


def test_hybrid_mode_and_its_weights(client):
    params = {"q": "silver wrist watch", "k": 3, "mode": "hybrid", "rrf_k": 10}
    body = client.get("/search", params=params).json()
    assert body["mode"] == "hybrid" and body["results"][0]["id"] == "p12"
    assert body["results"][0]["score"] == pytest.approx(2 / 11)  # first in both channels
    for zero in ({"vector_weight": 0, "lexical_weight": 0}, {"lexical_weight": 0}):
        refused = client.get("/search", params={**params, **zero})
        assert refused.status_code == 422 and "greater than 0" in refused.json()["detail"]
    body = client.post("/search", json={"queries": ["x"], "mode": "hybrid", "vector_weight": 0})
    assert body.status_code == 422


def test_explain_returns_the_keywords_keyword_enhancement_attached(tmp_path):
    import torch

    from index.index_testing import write_catalog
    from makevl.data.catalog import iter_catalog
    from makevl.index.build import build_index
    from makevl.models.inference import MakeEncoder
    from models.tiny import KEYWORDS, tiny_model

    vocabulary = ["red", "blue", "shoes", "watch", "leather", "summer"][:KEYWORDS]
    encoder = MakeEncoder(tiny_model(), keywords=vocabulary)
    products = list(iter_catalog(write_catalog(tmp_path / "shop")))
    build_index(
        products,
        tmp_path / "index",
        encoder,
        encoder_spec={"type": "test"},
        model_hash="tiny",
        progress=False,
    )
    searcher = Searcher(tmp_path / "index", encoder=encoder, model_hash="tiny")
    with TestClient(create_app(searcher)) as tiny_client:
        body = tiny_client.get("/search", params={"q": "red shoes", "explain": "true"}).json()
        plain = tiny_client.get("/search", params={"q": "red shoes"}).json()
        batch = tiny_client.post(
            "/search", json={"queries": ["red shoes", "watch"], "explain": True}
        ).json()
    model = encoder.model.eval()
    with torch.no_grad():
        tokens = encoder.tokenize_queries(["red shoes"])
        attention = model.keyword_attention(model.encode_query_pair(**tokens)[1])[0]
    order = attention.argsort(descending=True)[:5].tolist()
    assert [k["keyword"] for k in body["keywords"]] == [vocabulary[i] for i in order]
    assert [k["weight"] for k in body["keywords"]] == pytest.approx(attention[order].tolist())
    assert plain["keywords"] is None
    assert len(batch["keywords"]) == 2  # one list per query, the same as one by one
    assert [k["keyword"] for k in batch["keywords"][0]] == [k["keyword"] for k in body["keywords"]]


def test_a_misspelt_query_is_searched_as_corrected_and_says_so(tmp_path):
    from index.index_testing import write_catalog
    from makevl.data.catalog import iter_catalog
    from makevl.index.build import build_index
    from makevl.models.inference import MakeEncoder
    from makevl.spelling import build_spelling
    from models.tiny import tiny_model

    products = list(iter_catalog(write_catalog(tmp_path / "shop")))
    model = tiny_model().eval()
    model.spelling = build_spelling(products, [])
    encoder = MakeEncoder(model)
    build_index(products, tmp_path / "index", encoder, encoder_spec={"type": "test"},
                model_hash="tiny", progress=False)  # fmt: skip
    searcher = Searcher(tmp_path / "index", encoder=encoder, model_hash="tiny")
    with TestClient(create_app(searcher)) as tiny_client:
        for mode in ("vector", "hybrid"):
            typed = tiny_client.get("/search", params={"q": "lether handbga", "mode": mode}).json()
            meant = tiny_client.get("/search", params={"q": "leather handbag", "mode": mode}).json()
            assert typed["query"] == "lether handbga"
            assert typed["searched_as"] == meant["searched_as"] == "leather handbag"
            assert [r["id"] for r in typed["results"]] == [r["id"] for r in meant["results"]]
        batch = tiny_client.post("/search", json={"queries": ["runing shoes", "red"]}).json()
    assert batch["searched_as"] == ["running shoes", "red"]

"""The search server: a FastAPI app over one :class:`~makevl.index.search.Searcher`.

Endpoints: ``GET /search?q=&k=``, ``POST /search`` (a batch), ``GET
/products/{id}``, ``GET /products/{id}/image``, ``GET /healthz``, ``GET
/metrics`` and the web page at ``/``. Every input is validated by pydantic
with explicit limits; bad input gets a 422 whose ``detail`` says what is wrong,
never a 500. Images are looked up by product id in the index, so no path a
client sends is ever opened.
"""

from __future__ import annotations

import mimetypes
import time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from makevl.index.search import Hit, Searcher
from makevl.serving.metrics import Metrics, MetricsMiddleware

STATIC_DIR = Path(__file__).parent / "static"
MAX_QUERY_CHARS = 256
MAX_K = 100
MAX_BATCH = 64
MAX_ID_CHARS = 512


def _clean_query(text: str) -> str:
    text = text.strip()
    if not text:
        raise PydanticCustomError("query_empty", "query is empty")
    if len(text) > MAX_QUERY_CHARS:
        raise PydanticCustomError(
            "query_too_long",
            "query is {length} characters long; the limit is {limit}",
            {"length": len(text), "limit": MAX_QUERY_CHARS},
        )
    return text


QueryText = Annotated[str, AfterValidator(_clean_query)]
ProductId = Annotated[str, PathParam(min_length=1, max_length=MAX_ID_CHARS)]
TopK = Annotated[int, Field(ge=1, le=MAX_K, description=f"results per query, 1..{MAX_K}")]


class SearchParams(BaseModel):
    q: QueryText = Field(description=f"the query, 1..{MAX_QUERY_CHARS} characters")
    k: TopK = 10


class BatchSearch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    queries: list[QueryText] = Field(min_length=1, max_length=MAX_BATCH)
    k: TopK = 10


class ModalityWeights(BaseModel):
    """Modal Adaptation: how much the title, image and fused vectors counted."""

    title: float
    image: float
    fused: float


class ProductView(BaseModel):
    """An indexed product as the API shows it."""

    id: str
    title: str
    image_url: str | None
    modality_weights: ModalityWeights
    attributes: dict[str, str]


class Result(ProductView):
    score: float


class SearchResponse(BaseModel):
    query: str
    k: int
    took_ms: float
    results: list[Result]


class BatchResponse(BaseModel):
    k: int
    took_ms: float
    results: list[list[Result]]


def _product(hit: Hit) -> dict[str, Any]:
    return {
        "id": hit.id,
        "title": hit.title,
        "image_url": f"/products/{quote(hit.id, safe='')}/image" if hit.image else None,
        "modality_weights": hit.modality_weights,
        "attributes": hit.attributes,
    }


def _result(hit: Hit) -> dict[str, Any]:
    return {**_product(hit), "score": hit.score}


def _where(loc: tuple) -> str:
    if not loc:
        return "request"
    kind, rest = loc[0], [str(part) for part in loc[1:]]
    if kind == "query":
        return f"query parameter {'.'.join(rest)!r}"
    if kind == "path":
        return f"path parameter {'.'.join(rest)!r}"
    if kind == "body":
        return "body" + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in rest)
    return ".".join([str(kind), *rest])


_IMAGE_MAGIC = [
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF8", "image/gif"),
    (b"BM", "image/bmp"),
]


def _image_type(data: bytes) -> str:
    for magic, media_type in _IMAGE_MAGIC:
        if data.startswith(magic):
            return media_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def create_app(index: str | Path | Searcher, **searcher_options: Any) -> FastAPI:
    """Build the app over an index directory (loaded here) or a ready :class:`Searcher`."""
    searcher = index if isinstance(index, Searcher) else Searcher(index, **searcher_options)
    metrics = Metrics()
    app = FastAPI(
        title="makevl search",
        description="Text-to-multimodal product retrieval (MAKE).",
        version="0.1.0",
    )
    app.state.searcher = searcher
    app.state.metrics = metrics
    image_headers = {"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"}

    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"where": _where(tuple(e.get("loc", ()))), "msg": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        detail = "; ".join(f"{e['where']}: {e['msg']}" for e in errors) or "invalid request"
        return JSONResponse(status_code=422, content={"detail": detail, "errors": errors})

    @app.get("/search", response_model=SearchResponse)
    def search(params: Annotated[SearchParams, Query()]) -> dict[str, Any]:
        start = time.perf_counter()
        hits = searcher.search([params.q], k=params.k)[0]
        return {
            "query": params.q,
            "k": params.k,
            "took_ms": (time.perf_counter() - start) * 1000,
            "results": [_result(h) for h in hits],
        }

    @app.post("/search", response_model=BatchResponse)
    def search_batch(body: BatchSearch) -> dict[str, Any]:
        start = time.perf_counter()
        results = searcher.search(body.queries, k=body.k)
        return {
            "k": body.k,
            "took_ms": (time.perf_counter() - start) * 1000,
            "results": [[_result(h) for h in hits] for hits in results],
        }

    # Ids may contain '/', hence the path converter; the image route must come first.
    @app.get("/products/{product_id:path}/image", response_class=Response)
    def product_image(product_id: ProductId) -> Response:
        image = searcher.image(product_id)  # looked up by id: only indexed catalog images
        if image is None:
            known = searcher.product(product_id) is not None
            raise HTTPException(
                404,
                f"product {product_id!r} has no image"
                if known
                else f"no product {product_id!r} in the index",
            )
        if isinstance(image, bytes):
            return Response(image, media_type=_image_type(image[:16]), headers=image_headers)
        path = Path(image)
        if not path.is_file():
            raise HTTPException(
                404, f"the image of product {product_id!r} is missing on the server"
            )
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if not media_type.startswith("image/") or media_type == "image/svg+xml":
            media_type = "application/octet-stream"
        return FileResponse(path, media_type=media_type, headers=image_headers)

    @app.get("/products/{product_id:path}", response_model=ProductView)
    def product(product_id: ProductId) -> dict[str, Any]:
        hit = searcher.product(product_id)
        if hit is None:
            raise HTTPException(404, f"no product {product_id!r} in the index")
        return _product(hit)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {
            "status": "ok",
            "products": len(searcher),
            "dim": searcher.dim,
            "index_type": searcher.manifest.get("index_type"),
            "model_hash": searcher.model_hash,
        }

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus_metrics() -> PlainTextResponse:
        text = metrics.render({"makevl_index_products": ("Products in the index.", len(searcher))})
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app

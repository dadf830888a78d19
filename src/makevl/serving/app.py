"""The search server: a FastAPI app over one :class:`~makevl.index.search.Searcher`.

Endpoints: ``GET /search?q=&k=`` (with optional ``filter=attr:value``,
``mode=hybrid`` and ``explain=true``), ``POST /search`` (a batch), ``GET /facets``,
``GET /products/{id}``, ``GET /products/{id}/image``, ``GET /healthz``, ``GET
/metrics`` and the web page at ``/``. Every input is validated by pydantic
with explicit limits; bad input gets a 422 whose ``detail`` says what is wrong,
never a 500, and every error answer is documented in ``/openapi.json``. Request
bodies are capped in size and read time (:mod:`makevl.serving.limits`). Images
are looked up by product id in the index, so no path a client sends is ever
opened, and a stored path is served only if it lies in the catalog's image
folder (:mod:`makevl.serving.images`).

Searches go through one worker that batches concurrent queries into one
encoder call and sheds load with 503 + ``Retry-After`` rather than queueing
without bound (:mod:`makevl.serving.batching`). The index is live: a version
published by ``makevl index add|delete|build`` replaces the served one without
a restart, and every response comes from one version, named in its
``X-Index-Version`` header (:mod:`makevl.serving.live_index`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from makevl.data.text import TextError, check_text
from makevl.index.search import (
    Fusion,
    Hit,
    NoLexicalChannelError,
    Searcher,
    UnknownFilterError,
    parse_filters,
)
from makevl.serving.batching import BatchSettings, Overloaded, SearchBatcher
from makevl.serving.images import MEDIA_TYPES, ImageRefused, image_roots, image_type, servable_image
from makevl.serving.limits import BODY_TIMEOUT_S, MAX_BODY_BYTES, BodyLimits
from makevl.serving.live_index import LiveIndex, index_version
from makevl.serving.metrics import Metrics, MetricsMiddleware
from makevl.serving.worker_process import SearchProcess, can_search_apart

STATIC_DIR = Path(__file__).parent / "static"
MAX_QUERY_CHARS = 256
MAX_K = 100
MAX_BATCH = 64
MAX_ID_CHARS = 512
MAX_FILTERS = 32
MAX_FILTER_CHARS = 256
EXPLAINED_KEYWORDS = 5
VERSION_HEADER = "X-Index-Version"  # the index version a response was computed from
log = logging.getLogger("makevl.serving")
# What the schema's pattern \S (an ECMAScript regex) calls white space; Python's
# str.strip() also strips \x1c-\x1f and \x85, which the schema allows in a query.
SCHEMA_BLANKS = (
    "\t\n\v\f\r \u00a0\u1680\u2028\u2029\u202f\u205f\u3000\ufeff"
    + "".join(chr(c) for c in range(0x2000, 0x200B))
)


def _clean_query(text: str) -> str:
    """The checks the schema documents (length, not blank, UTF-8), with messages that say which."""
    if len(text) > MAX_QUERY_CHARS:
        raise PydanticCustomError(
            "query_too_long",
            "query is {length} characters long; the limit is {limit}",
            {"length": len(text), "limit": MAX_QUERY_CHARS},
        )
    text = text.strip(SCHEMA_BLANKS)
    if not text:
        raise PydanticCustomError("query_empty", "query is empty")
    try:
        return check_text(text, "query")
    except TextError as exc:
        raise PydanticCustomError("query_not_utf8", str(exc)) from None


# The schema says what _clean_query enforces: 1..MAX_QUERY_CHARS characters, not all blank.
QueryText = Annotated[
    str,
    AfterValidator(_clean_query),
    Field(json_schema_extra={"minLength": 1, "maxLength": MAX_QUERY_CHARS, "pattern": r"\S"}),
]
ProductId = Annotated[str, PathParam(min_length=1, max_length=MAX_ID_CHARS)]
TopK = Annotated[int, Field(ge=1, le=MAX_K, description=f"results per query, 1..{MAX_K}")]


def _clean_filter(text: str) -> str:
    try:
        parse_filters([check_text(text, "filter")])
    except ValueError as exc:  # TextError included
        raise PydanticCustomError("filter_invalid", str(exc)) from None
    return text


# Any ATTRIBUTE:VALUE; each app's /openapi.json names its index's attributes instead.
ANY_FILTER = r"^[^:]+:"
FilterText = Annotated[
    str,
    AfterValidator(_clean_filter),
    Field(max_length=MAX_FILTER_CHARS, json_schema_extra={"pattern": ANY_FILTER}),
]
# > 0, not >= 0: with both 0 no ranking is left, and the schema cannot say "not both"
# (schemathesis sent 0/0). Leaving a channel out is mode=vector, or Fusion() in Python.
Weight = Annotated[float, Field(gt=0, le=100)]


class SearchOptions(BaseModel):
    """Filters, the retrieval mode and the query explanation: the same for GET and POST."""

    filter: list[FilterText] = Field(
        default_factory=list,
        max_length=MAX_FILTERS,
        description="ATTRIBUTE:VALUE, repeatable: values of one attribute are OR-ed, "
        "attributes AND-ed; results stay the top k of the matching products",
    )
    mode: Literal["vector", "hybrid"] = Field(
        "vector", description="vector: MAKE only; hybrid: MAKE and BM25 by reciprocal rank fusion"
    )
    vector_weight: Weight = Field(1.0, description="hybrid: weight of the MAKE ranking")
    lexical_weight: Weight = Field(1.0, description="hybrid: weight of the BM25 ranking")
    rrf_k: float = Field(60.0, gt=0, le=10_000, description="hybrid: the RRF constant k")
    explain: bool = Field(
        False, description="add the catalog keywords Keyword Enhancement attached to the query"
    )


class SearchParams(SearchOptions):
    q: QueryText = Field(description=f"the query, 1..{MAX_QUERY_CHARS} characters")
    k: TopK = 10


class BatchSearch(SearchOptions):
    # strict: JSON types as the schema says them (no false for a number, no 0 for false)
    model_config = ConfigDict(extra="forbid", strict=True)
    queries: list[QueryText] = Field(min_length=1, max_length=MAX_BATCH)
    k: Annotated[TopK, Field(strict=False)] = 10  # JSON Schema's integer includes 10.0


class Problem(BaseModel):
    detail: str  # what is wrong, for a person


class ProblemItem(BaseModel):
    where: str  # e.g. "query parameter 'k'", "body.queries[1]"
    msg: str


class ValidationProblem(Problem):
    errors: list[ProblemItem]


def _documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses a route can answer."""
    why = {
        404: "no such product, or it has no image to serve",
        408: "the request body did not arrive within the server's time limit",
        413: "the request body is over the server's size limit",
        422: "invalid parameters or body; `errors` lists each problem",
        503: "the server is overloaded (search queue full, or the search waited past its "
        "deadline); retry after `Retry-After` seconds",
    }
    retry = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}
    return {
        s: {
            "model": ValidationProblem if s == 422 else Problem,
            "description": why[s],
            **({"headers": retry} if s == 503 else {}),
        }
        for s in statuses
    }


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


class QueryKeyword(BaseModel):
    """A catalog keyword Keyword Enhancement attached to the query, and its attention weight."""

    keyword: str
    weight: float


class SearchResponse(BaseModel):
    query: str
    searched_as: str  # the query after spelling correction (the same where nothing changed)
    k: int
    mode: str
    filters: dict[str, list[str]]
    took_ms: float
    results: list[Result]
    keywords: list[QueryKeyword] | None = None  # with explain=true


class BatchResponse(BaseModel):
    searched_as: list[str]  # each query after spelling correction
    k: int
    mode: str
    filters: dict[str, list[str]]
    took_ms: float
    results: list[list[Result]]
    keywords: list[list[QueryKeyword]] | None = None  # with explain=true, one list per query


class FacetValue(BaseModel):
    value: str
    count: int  # products with this value


class Facet(BaseModel):
    attribute: str
    values: list[FacetValue]  # the most common first


class Facets(BaseModel):
    facets: list[Facet]


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


def _printable(text: str) -> str:
    """``text`` with lone surrogates escaped, so a response can always be encoded as UTF-8."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _where(loc: tuple) -> str:
    if not loc:
        return "request"
    kind, rest = loc[0], [_printable(str(part)) for part in loc[1:]]
    if kind == "query":
        return f"query parameter {'.'.join(rest)!r}"
    if kind == "path":
        return f"path parameter {'.'.join(rest)!r}"
    if kind == "body":
        return "body" + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in rest)
    return ".".join([str(kind), *rest])


def _document_index(schema: dict[str, Any], searcher: Searcher) -> None:
    """Say in the schema which filter attributes and modes this index serves; a request for
    another one gets a 422 (walks the schema, changing it in place)."""
    names = "|".join(re.sub(r"[\\^$.|?*+()\[\]{}/-]", r"\\\g<0>", n) for n in searcher.postings)
    pattern = f"^({names}):" if names else "(?!)"  # no attributes: no filter is valid
    modes = ["vector", "hybrid"] if searcher.lexical is not None else ["vector"]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("pattern") == ANY_FILTER:
                node["pattern"] = pattern
            if node.get("enum") == ["vector", "hybrid"]:
                node["enum"] = modes
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(schema)


def _invalid(source: str, field: str, exc: Exception) -> RequestValidationError:
    """A 422 (through the validation handler) for a value only the index can judge."""
    return RequestValidationError(
        [{"loc": (source, field), "msg": str(exc), "type": "value_error"}]
    )


def _unprocessable(errors: list[dict[str, str]]) -> JSONResponse:
    """422 with a :class:`ValidationProblem` body."""
    detail = "; ".join(f"{e['where']}: {e['msg']}" for e in errors) or "invalid request"
    return JSONResponse(status_code=422, content={"detail": detail, "errors": errors})


def create_app(
    index: str | Path | Searcher | LiveIndex,
    *,
    image_root: str | Path | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    body_timeout: float = BODY_TIMEOUT_S,
    batching: BatchSettings | None = None,
    reload_s: float = 1.0,
    **searcher_options: Any,
) -> FastAPI:
    """Build the app over an index directory (loaded here), a ready :class:`Searcher` or a
    :class:`LiveIndex`.

    While the app runs (its lifespan), the index directory is checked for a new
    version every ``reload_s`` seconds (0: never). Image files are served only
    from under ``image_root``, by default the catalog folders recorded in the
    served version's manifest.
    """
    if isinstance(index, LiveIndex):
        live = index
    else:
        first = index if isinstance(index, Searcher) else Searcher(index, **searcher_options)
        live = LiveIndex(first, poll_s=reload_s, **searcher_options)
    if not image_roots(image_root or live.current.manifest.get("image_roots", [])):
        log.warning("%s records no image root: no image file will be served", live.index_dir)
    metrics = Metrics()
    batching = batching or BatchSettings()
    if batching.process and not can_search_apart(live.current):
        log.warning("%s: Milvus Lite serves one process; searching in a thread", live.index_dir)
        batching = dataclasses.replace(batching, process=False)

    def search_in_process(searcher: Searcher, queries: list[str], **options: Any):
        return app.state.search_process.search(searcher, queries, **options)

    batcher = SearchBatcher(
        batching, metrics, search=search_in_process if batching.process else None
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if batching.process:  # started here so that it never outlives the app
            process = SearchProcess(live.current, batching.threads, **searcher_options)
            app.state.search_process = process
            live.prepare = process.load  # a new version is loaded there before it is served
        live.start()
        yield
        live.close()
        batcher.close()
        if batching.process:
            live.prepare = None
            process.close()

    app = FastAPI(
        title="makevl search",
        description="Text-to-multimodal product retrieval (MAKE).",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.live_index = live
    app.state.batcher = batcher
    app.state.metrics = metrics
    app.state.search_process = None  # the worker process while the app runs, if it has one
    image_headers = {"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"}

    app.add_middleware(BodyLimits, max_bytes=max_body_bytes, timeout=body_timeout)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: counts 408s and 413s too

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"where": _where(tuple(e.get("loc", ()))), "msg": _printable(str(e.get("msg", "")))}
            for e in exc.errors()
        ]
        return _unprocessable(errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # FastAPI answers a body that json cannot even decode (not UTF-8, nested too deeply)
        # with a bare 400; it is invalid input like any other, so it gets the documented 422.
        if exc.status_code == 400 and isinstance(exc.__cause__, (ValueError, RecursionError)):
            reason = (
                "nested too deeply" if isinstance(exc.__cause__, RecursionError) else exc.__cause__
            )
            return _unprocessable([{"where": "body", "msg": f"not valid JSON: {reason}"}])
        if exc.status_code == 405:  # Starlette's Allow names only the first route on the path
            allowed = {
                method
                for route in app.routes
                if isinstance(route, APIRoute) and route.matches(request.scope)[0] != Match.NONE
                for method in route.methods
            }
            exc.headers = {"Allow": ", ".join(sorted(allowed))}
        return await http_exception_handler(request, exc)

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after)}
        return JSONResponse(status_code=503, content={"detail": exc.detail}, headers=headers)

    async def run_search(
        queries: list[str], k: int, options: SearchOptions, source: str, response: Response
    ) -> dict[str, Any]:
        """The search and the response fields all search routes share; a filter or mode
        the index cannot serve is a 422 naming the parameter. The search itself runs on
        the batching worker, against the index version current when the request came."""
        start = time.perf_counter()
        searcher = live.current  # this request's version, whatever is published meanwhile
        filters = parse_filters(options.filter)
        fusion = None
        if options.mode == "hybrid":
            try:
                fusion = Fusion(options.vector_weight, options.lexical_weight, options.rrf_k)
            except ValueError as exc:
                raise _invalid(source, "lexical_weight", exc) from None
        try:
            results = await batcher.search(
                searcher, queries, k=k, filters=filters, mode=options.mode, fusion=fusion
            )
        except UnknownFilterError as exc:
            raise _invalid(source, "filter", exc) from None
        except NoLexicalChannelError as exc:
            raise _invalid(source, "mode", exc) from None
        keywords = None
        if options.explain:
            explained = await asyncio.to_thread(
                searcher.query_keywords, queries, EXPLAINED_KEYWORDS
            )
            keywords = [
                [{"keyword": word, "weight": weight} for word, weight in found]
                for found in explained
            ]
        response.headers[VERSION_HEADER] = index_version(searcher)
        return {
            "searched_as": searcher.searched_as(queries),
            "k": k,
            "mode": options.mode,
            "filters": filters,
            "took_ms": (time.perf_counter() - start) * 1000,
            "results": [[_result(h) for h in hits] for hits in results],
            "keywords": keywords,
        }

    @app.get("/search", response_model=SearchResponse, responses=_documented(422, 503))
    async def search(
        params: Annotated[SearchParams, Query()], response: Response
    ) -> dict[str, Any]:
        found = await run_search([params.q], params.k, params, "query", response)
        keywords = found["keywords"]
        return {
            **found,
            "query": params.q,
            "searched_as": found["searched_as"][0],
            "results": found["results"][0],
            "keywords": keywords[0] if keywords is not None else None,
        }

    @app.post("/search", response_model=BatchResponse, responses=_documented(408, 413, 422, 503))
    async def search_batch(body: BatchSearch, response: Response) -> dict[str, Any]:
        return await run_search(body.queries, body.k, body, "body", response)

    @app.get("/facets", response_model=Facets, responses=_documented(422))
    def facets(
        top: Annotated[int, Query(ge=1, le=100, description="values per attribute")] = 20,
    ) -> dict[str, Any]:
        searcher = live.current
        return {
            "facets": [
                {"attribute": name, "values": [{"value": v, "count": n} for v, n in values]}
                for name, values in searcher.facets(top).items()
            ]
        }

    image_responses = {
        200: {
            "description": "the image (an embedded one of unknown type as octet-stream)",
            "content": {t: {} for t in [*MEDIA_TYPES, "application/octet-stream"]},
        },
        **_documented(404, 422),
    }

    # Ids may contain '/', hence the path converter; the image route must come first.
    @app.get(
        "/products/{product_id:path}/image", response_class=Response, responses=image_responses
    )
    def product_image(product_id: ProductId) -> Response:
        searcher = live.current
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
            media_type = image_type(image) or "application/octet-stream"
            return Response(image, media_type=media_type, headers=image_headers)
        roots = image_roots(image_root or searcher.manifest.get("image_roots", []))
        try:
            path, media_type = servable_image(image, roots)
        except FileNotFoundError:
            raise HTTPException(
                404, f"the image of product {product_id!r} is missing on the server"
            ) from None
        except ImageRefused as exc:
            log.warning("not serving the image of product %r: %s", product_id, exc)
            raise HTTPException(
                404, f"the image of product {product_id!r} is not served (see the server log)"
            ) from None
        return FileResponse(path, media_type=media_type, headers=image_headers)

    @app.get(
        "/products/{product_id:path}",
        response_model=ProductView,
        responses=_documented(404, 422),
    )
    def product(product_id: ProductId, response: Response) -> dict[str, Any]:
        searcher = live.current
        hit = searcher.product(product_id)
        if hit is None:
            raise HTTPException(404, f"no product {product_id!r} in the index")
        response.headers[VERSION_HEADER] = index_version(searcher)
        return _product(hit)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        searcher = live.current
        return {
            "status": "ok",
            "products": len(searcher),
            "dim": searcher.dim,
            "index_type": searcher.manifest.get("index_type"),
            "model_hash": searcher.model_hash,
            "runtime": searcher.runtime,  # the query tower's: torch, onnx-fp32 or onnx-int8
            "index_version": index_version(searcher),
            "reload_error": live.error,  # why a newer published version is not served
            "queue_depth": batcher.depth,
        }

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus_metrics() -> PlainTextResponse:
        gauges = {
            "makevl_index_products": ("Products in the index.", len(live.current)),
            "makevl_index_reloads": ("New index versions loaded since start.", live.reloads),
            "makevl_queue_depth": ("Searches waiting for the search worker.", batcher.depth),
        }
        if app.state.search_process is not None:
            gauges["makevl_search_process_restarts"] = (
                "Search processes started again after one died.",
                app.state.search_process.restarts,
            )
        return PlainTextResponse(metrics.render(gauges), media_type="text/plain; version=0.0.4")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _document_index(app.openapi(), live.current)  # app.openapi() caches the schema it returns
    return app

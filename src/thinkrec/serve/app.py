"""The HTTP API (FastAPI) and its web page.

Endpoints: ``POST /recommend``, ``GET /items/search``, ``GET /health``, ``GET /`` (the web page; its script
and style at ``/static/app.js`` and ``/static/style.css``), OpenAPI at ``/openapi.json``.

Every error a client can cause is a 4xx with a JSON body ``{"error": "...", "detail": ...}``: malformed JSON,
wrong types, unknown fields and out-of-range values (422), unknown item ids (422), a body over
:data:`MAX_BODY_BYTES` (413). The model is loaded once by :func:`create_app`; endpoints are synchronous (run
in the server's thread pool); concurrent ``/recommend`` requests are micro-batched
(:mod:`thinkrec.serve.batching`): requests that arrive while a model pass runs share the next one. The web
page's three files are read once at start-up; no request reads a file.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StringConstraints
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from thinkrec import __version__
from thinkrec.serve.batching import MicroBatcher
from thinkrec.serve.batching import Query as BatchQuery
from thinkrec.serve.recommender import MAX_K, MAX_SEARCH, Recommender, Recommends

MAX_BODY_BYTES = 64 * 1024
MAX_HISTORY = 2000
MAX_ID_CHARS = 200
STATIC_FILES = {"app.js": "text/javascript", "style.css": "text/css"}

ItemId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS)] | StrictInt


class RecommendRequest(BaseModel):
    """A history of external item ids (oldest first) and what to return."""

    model_config = ConfigDict(extra="forbid")

    history: list[ItemId] = Field(..., min_length=1, max_length=MAX_HISTORY, description="external ids, oldest first")
    k: StrictInt = Field(10, ge=1, le=MAX_K, description="how many items")
    reasoning_steps: StrictInt | None = Field(
        None, ge=0, le=64, description="reasoning models: steps K (default: the model's); 0 = backbone only"
    )
    exclude_seen: StrictBool = Field(False, description="never recommend items of the history")


class Item(BaseModel):
    item: str | int
    title: str
    score: float


class SearchItem(BaseModel):
    item: str | int
    title: str


class RecommendResponse(BaseModel):
    items: list[Item]
    steps: list[list[Item]] | None = Field(
        None, description="reasoning models: the top-K of each state, step 0 = before reasoning"
    )
    reasoning: str | None = Field(None, description="R²ec models: the reasoning text written before ranking")
    history_used: int = Field(..., description="history items the model saw (the most recent max_len)")
    reasoning_steps: int
    model: dict[str, Any]


class SearchResponse(BaseModel):
    items: list[SearchItem]


class BodyLimit:
    """ASGI middleware: requests whose body exceeds ``max_bytes`` get 413, whether or not they say their length."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and not length.isdigit():
            await _error(400, "invalid Content-Length header")(scope, receive, send)
            return
        if length is not None and int(length) > self.max_bytes:
            await _error(413, f"request body larger than {self.max_bytes} bytes")(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, f"request body larger than {self.max_bytes} bytes")
            return message

        await self.app(scope, limited, send)


def _error(status: int, message: str, detail: Any = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if detail is not None:
        body["detail"] = detail
    return JSONResponse(body, status_code=status)


def _validation_detail(exc: RequestValidationError) -> list[dict[str, Any]]:
    return [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))} for e in exc.errors()]


def _static(name: str) -> str:
    return resources.files("thinkrec.serve").joinpath("static", name).read_text(encoding="utf-8")


def load_recommender(run_dir: str | Path, ann: bool = False) -> Recommends:
    """The run in ``run_dir``: an R²ec run (``thinkrec llm train``) or an engine run (``thinkrec train``)."""
    from thinkrec.serve.llm import LLMRecommender, is_llm_run

    if is_llm_run(run_dir):
        if ann:
            from thinkrec.errors import ThinkrecError

            raise ThinkrecError(f"{run_dir}: --ann is for engine runs; an R²ec run always scores exactly")
        return LLMRecommender.from_run(run_dir)
    return Recommender.from_run(run_dir, ann=ann)


def create_app(run_dir: str | Path | None = None, *, recommender: Recommends | None = None) -> FastAPI:
    """The API for the run in ``run_dir`` (or an already loaded ``recommender``), model loaded once."""
    if recommender is None:
        if run_dir is None:
            raise ValueError("give run_dir or recommender")
        recommender = load_recommender(run_dir)
    rec = recommender
    batcher = MicroBatcher(rec)
    pages = {"index.html": _static("index.html"), **{name: _static(name) for name in STATIC_FILES}}
    app = FastAPI(title="thinkrec", version=__version__, description="Sequential recommendations of a trained run.")
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    app.state.batcher = batcher  # its pass / answer counters show how much batching happened

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = _validation_detail(exc)
        summary = "; ".join(f"{'.'.join(d['loc'])}: {d['msg']}" for d in detail[:3])
        return _error(422, f"invalid request: {summary}", detail)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail
        if isinstance(detail, dict):
            return _error(exc.status_code, str(detail.get("error", "")), detail.get("detail"))
        return _error(exc.status_code, str(detail))

    def item(internal: int, score: float) -> Item:
        return Item(item=rec.vocabulary.external_id(internal), title=rec.vocabulary.title(internal), score=score)

    @app.post("/recommend", response_model=RecommendResponse)
    def recommend(request: RecommendRequest) -> RecommendResponse:
        """Top-K items for a history of external item ids."""
        internal = [rec.vocabulary.internal(i) for i in request.history]
        unknown = [i for i, v in zip(request.history, internal, strict=True) if v is None]
        if unknown:
            raise HTTPException(
                422, {"error": f"unknown item ids: {unknown[:10]}", "detail": {"unknown": unknown[:100]}}
            )
        history = [v for v in internal if v is not None]
        if request.reasoning_steps is not None and request.reasoning_steps > rec.max_reasoning_steps:
            raise HTTPException(422, f"reasoning_steps must be in 0..{rec.max_reasoning_steps} for this model")
        try:
            answer = batcher.submit(BatchQuery(history, request.k, request.reasoning_steps, request.exclude_seen))
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc
        steps = answer.steps
        return RecommendResponse(
            items=[item(i, s) for i, s in answer.items],
            steps=[[item(i, s) for i, s in row] for row in steps] if steps else None,
            reasoning=answer.text,
            history_used=min(len(history), rec.max_len),
            reasoning_steps=(rec.reasoning_steps if request.reasoning_steps is None else request.reasoning_steps)
            if rec.max_reasoning_steps > 0
            else 0,
            model=rec.describe(),
        )

    @app.get("/items/search", response_model=SearchResponse)
    def search(
        q: Annotated[str, Query(min_length=1, max_length=MAX_ID_CHARS, description="part of a title")],
        limit: Annotated[int, Query(ge=1, le=MAX_SEARCH)] = 20,
    ) -> SearchResponse:
        """Items whose title contains ``q`` (case-insensitive), best matches first."""
        found = rec.search(q, limit)
        return SearchResponse(
            items=[SearchItem(item=rec.vocabulary.external_id(i), title=rec.vocabulary.title(i)) for i in found]
        )

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Liveness and the model's facts."""
        return {"status": "ok", "version": __version__, "model": rec.describe()}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(pages["index.html"])

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in STATIC_FILES:
            raise HTTPException(404, f"no static file {name!r}")
        return Response(pages[name], media_type=STATIC_FILES[name])

    return app


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, ann: bool = False) -> None:
    """Run the API with uvicorn (blocking); ``ann``: approximate top-K through a FAISS index."""
    import uvicorn

    app = create_app(recommender=load_recommender(run_dir, ann=ann))
    uvicorn.run(app, host=host, port=port, log_level="info")

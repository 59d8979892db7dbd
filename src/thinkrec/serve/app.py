"""The HTTP API (FastAPI) and its web page.

Endpoints: ``POST /recommend`` (a history of item ids, or a known ``user`` of the run's dataset: their
history up to their held-out test item, which the answer marks), ``GET /items/search``, ``GET /health``,
``GET /`` (the web page; its script and style at ``/static/app.js`` and ``/static/style.css``), OpenAPI at
``/openapi.json``.

Every error a client can cause is a 4xx with a JSON body ``{"error": "...", "detail": ...}``: malformed JSON,
wrong types, unknown fields and out-of-range values (422), unknown item or user ids (422), a body over
:data:`MAX_BODY_BYTES` (413), a body that is not ``application/json`` (415), a ``Host`` header that is not one
of the allowed hosts (400: a web page of another site that a DNS name pointed at this machine cannot reach
the API through the visitor's browser). The model is loaded once by :func:`create_app`; endpoints are synchronous (run
in the server's thread pool); concurrent ``/recommend`` requests are micro-batched
(:mod:`thinkrec.serve.batching`): requests that arrive while a model pass runs share the next one. The web
page's three files are read once at start-up; no request reads a file.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    StringConstraints,
    field_validator,
    model_validator,
)
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from thinkrec import __version__
from thinkrec.errors import ThinkrecError
from thinkrec.eval.depth import parse_selector
from thinkrec.serve.batching import MicroBatcher
from thinkrec.serve.batching import Query as BatchQuery
from thinkrec.serve.recommender import MAX_K, MAX_SEARCH, Recommends, UserHistory
from thinkrec.serve.service import check_port, load_recommender

MAX_BODY_BYTES = 64 * 1024
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
ANY_INTERFACE = ("0.0.0.0", "::", "")
MAX_HISTORY = 2000
MAX_ID_CHARS = 200
STATIC_FILES = {"app.js": "text/javascript", "style.css": "text/css"}

ItemId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS)] | StrictInt


class RecommendRequest(BaseModel):
    """A history of external item ids (oldest first) or a known user, and what to return."""

    model_config = ConfigDict(extra="forbid")

    history: list[ItemId] | None = Field(
        None, min_length=1, max_length=MAX_HISTORY, description="external ids, oldest first (or give user)"
    )
    user: ItemId | None = Field(
        None,
        description="an external user id of the run's dataset: their history up to the held-out test item",
    )
    k: StrictInt = Field(10, ge=1, le=MAX_K, description="how many items")
    reasoning_steps: StrictInt | None = Field(
        None, ge=0, le=64, description="reasoning models: steps K (default: the model's); 0 = backbone only"
    )
    exclude_seen: StrictBool = Field(False, description="never recommend items of the history")
    depth: StrictStr | None = Field(
        None,
        min_length=1,
        max_length=64,
        description=(
            "reasoning models: a depth selector that chooses this history's reasoning step (fixed[:k], mean,"
            " best-fixed, weights, agree, agree-kl, entropy, router, router-prefix; 'none' = the inference mode;"
            " default: the server's --depth). Selectors that need fitting must have been fit for the run already"
        ),
    )

    @field_validator("depth")
    @classmethod
    def _known_depth(cls, value: str | None) -> str | None:
        if value is not None and value.strip() != "none":
            parse_selector(value)  # a ValueError naming the valid ones: 422
        return value

    @model_validator(mode="after")
    def _history_or_user(self) -> RecommendRequest:
        if (self.history is None) == (self.user is None):
            raise ValueError("give exactly one of history (external item ids) or user (a user of the dataset)")
        return self


class Item(BaseModel):
    item: str | int
    title: str
    score: float
    held_out: bool = Field(False, description="user requests: this is the user's held-out test item")


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
    history: list[SearchItem] | None = Field(None, description="user requests: the user's history, oldest first")
    held_out: SearchItem | None = Field(None, description="user requests: the held-out test item (the true next one)")
    reasoning_steps: int
    depth: str | None = Field(None, description="the depth selector that chose the step (None: the inference mode)")
    steps_used: int | None = Field(None, description="with depth: reasoning steps the selector's choice needed")
    step_weights: list[float] | None = Field(
        None, description="with depth: the weights of r_0..r_K in the user vector (one 1: the chosen step)"
    )
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


class JsonOnly:
    """ASGI middleware: a request body that is not ``application/json`` gets 415 (not a 422 about its fields)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            kind = dict(scope["headers"]).get(b"content-type", b"").split(b";")[0].strip().lower()
            if kind != b"application/json":
                shown = kind.decode("latin-1") or "none"
                message = f"the body must be JSON (Content-Type: application/json), got {shown}"
                await _error(415, message)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def allowed_hosts(bind: str | None = None, extra: Iterable[str] = ()) -> list[str]:
    """Host names the server answers to: the loopback names, the host it is bound to (unless that is every
    interface) and ``extra`` (``--allowed-host``); ``*`` in ``extra`` allows any."""
    hosts = [*LOOPBACK_HOSTS, *([bind] if bind and bind not in ANY_INTERFACE else []), *extra]
    return sorted({h.strip().lower().strip("[]") for h in hosts if h.strip()})


class TrustedHosts:
    """ASGI middleware: a request whose ``Host`` header names another host gets 400. Without it a web page
    of any site whose DNS name resolves to this machine could call the API from a visitor's browser."""

    def __init__(self, app: ASGIApp, hosts: Iterable[str]) -> None:
        self.app = app
        self.hosts = {h.lower() for h in hosts}

    def _allowed(self, header: bytes) -> bool:
        if "*" in self.hosts:
            return True
        host = header.decode("latin-1").strip().lower()
        if host.startswith("["):  # [::1]:8000
            host = host[1 : host.find("]")] if "]" in host else ""
        elif host.count(":") == 1:  # name:port
            host = host.split(":")[0]
        return host in self.hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and not self._allowed(dict(scope["headers"]).get(b"host", b"")):
            message = "this host name is not allowed; start the server with --allowed-host NAME to serve it"
            await _error(400, message)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _error(status: int, message: str, detail: Any = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if detail is not None:
        body["detail"] = detail
    return JSONResponse(body, status_code=status)


def _validation_detail(exc: RequestValidationError) -> list[dict[str, Any]]:
    return [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))} for e in exc.errors()]


def _static(name: str) -> str:
    return resources.files("thinkrec.serve").joinpath("static", name).read_text(encoding="utf-8")


def create_app(
    run_dir: str | Path | None = None,
    *,
    recommender: Recommends | None = None,
    hosts: Iterable[str] | None = None,
    depth: str | None = None,
) -> FastAPI:
    """The API for the run in ``run_dir`` (or an already loaded ``recommender``), model loaded once.

    ``hosts``: the ``Host`` names it answers to (default :func:`allowed_hosts`: the loopback names only).
    ``depth``: the default depth selector of ``run_dir``'s run (default its ``eval.depth``), fit on its
    validation samples now if it has not been.
    """
    if recommender is None:
        if run_dir is None:
            raise ValueError("give run_dir or recommender")
        recommender = load_recommender(run_dir, depth=depth)
    rec = recommender
    batcher = MicroBatcher(rec)
    pages = {"index.html": _static("index.html"), **{name: _static(name) for name in STATIC_FILES}}
    app = FastAPI(title="thinkrec", version=__version__, description="Sequential recommendations of a trained run.")
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(JsonOnly)
    app.add_middleware(TrustedHosts, hosts=allowed_hosts() if hosts is None else list(hosts))
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

    def item(internal: int, score: float, held_out: int | None = None) -> Item:
        vocab = rec.vocabulary
        marked = internal == held_out
        return Item(item=vocab.external_id(internal), title=vocab.title(internal), score=score, held_out=marked)

    def listed(internal: int) -> SearchItem:
        return SearchItem(item=rec.vocabulary.external_id(internal), title=rec.vocabulary.title(internal))

    def known_user(user: str | int) -> UserHistory:
        try:
            found = rec.user_history(user, hold_out=True)
        except KeyError as exc:
            raise HTTPException(422, {"error": f"unknown user: {exc.args[0]}", "detail": {"user": user}}) from None
        except ThinkrecError as exc:  # the run's dataset cannot be read here: a fault of the server, not the request
            raise HTTPException(503, f"users cannot be looked up on this server: {exc}") from None
        if not found.items:
            raise HTTPException(422, f"user {user!r} has no history before their held-out item")
        return found

    @app.post("/recommend", response_model=RecommendResponse)
    def recommend(request: RecommendRequest) -> RecommendResponse:
        """Top-K items for a history of external item ids, or for a known user of the run's dataset."""
        user = known_user(request.user) if request.user is not None else None
        if user is not None:
            history, times = user.items, [*user.times, user.now]
        else:
            ids = request.history or []
            internal = [rec.vocabulary.internal(i) for i in ids]
            unknown = [i for i, v in zip(ids, internal, strict=True) if v is None]
            if unknown:
                raise HTTPException(
                    422, {"error": f"unknown item ids: {unknown[:10]}", "detail": {"unknown": unknown[:100]}}
                )
            history, times = [v for v in internal if v is not None], None
        if request.reasoning_steps is not None and request.reasoning_steps > rec.max_reasoning_steps:
            raise HTTPException(422, f"reasoning_steps must be in 0..{rec.max_reasoning_steps} for this model")
        query = BatchQuery(history, request.k, request.reasoning_steps, request.exclude_seen, times, request.depth)
        try:
            answer = batcher.submit(query)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc
        steps = answer.steps
        mark = user.held_out if user is not None else None
        return RecommendResponse(
            items=[item(i, s, mark) for i, s in answer.items],
            steps=[[item(i, s, mark) for i, s in row] for row in steps] if steps else None,
            reasoning=answer.text,
            history_used=min(len(history), rec.max_len),
            history=[listed(i) for i in history] if user is not None else None,
            held_out=listed(user.held_out) if user is not None and user.held_out is not None else None,
            reasoning_steps=(rec.reasoning_steps if request.reasoning_steps is None else request.reasoning_steps)
            if rec.max_reasoning_steps > 0
            else 0,
            depth=answer.depth,
            steps_used=answer.steps_used,
            step_weights=answer.step_weights,
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


def serve(
    run_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    ann: bool = False,
    extra_hosts: Iterable[str] = (),
    depth: str | None = None,
) -> None:
    """Run the API with uvicorn (blocking); ``ann``: approximate top-K through a FAISS index;
    ``extra_hosts``: host names to answer to besides the loopback names and ``host``; ``depth``: the default
    depth selector (default the run's ``eval.depth``), fit on the run's validation samples before the server
    starts if it has not been."""
    import uvicorn

    check_port(port)
    rec = load_recommender(run_dir, ann=ann, depth=depth)
    app = create_app(recommender=rec, hosts=allowed_hosts(host, extra_hosts))
    uvicorn.run(app, host=host, port=port, log_level="info")

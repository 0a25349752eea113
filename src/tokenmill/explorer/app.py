"""The explorer: a page that draws the pipeline as blocks, and JSON and SVG routes over one run folder.

    /                       the page (static/index.html, explorer.js, explorer.css)
    /api/run                the blocks: status and key figure of each, and what each hands to the next
    /api/panel/NN           what block NN's panel shows (see panels.py)
    /api/chart/NN/NAME.svg  a chart of a stage still running, drawn from its logs (see progress.py)
    /api/file?path=P        a figure or stats file of the run; nothing outside the run folder
    /api/tokenize           POST {"text"}: the tokens of a text
    /api/attention          POST {"model", "prompt"}: the tokens; /api/attention.svg draws one layer
    /api/documents?q=TEXT   raw documents whose id or text holds TEXT
    /api/document?id=ID     one document followed through the run (see follow.py)
    /api/compare            POST {"prompt"}: the prompt answered by every model, with rewards
    /api/engine             the serving engine's requests and KV-cache blocks, when one is attached

Every route only reads. Every response forbids scripts from anywhere but the page's own files,
and anything the page shows from a document is put in as text. Every request passes the
serving API's `Guard` first: a Host header in the allow-list (DNS rebinding), JSON on a POST
(no cross-site form), and the explorer's key when it has one (a browser keeps it as a cookie
after opening the page once with `?key=KEY`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from fastapi import Body, FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from tokenmill.deploy.serve.guard import Guard
from tokenmill.errors import TokenmillError
from tokenmill.explorer.files import CONTENT_TYPES, OutsideRun, inside, read_json
from tokenmill.explorer.flow import handoffs
from tokenmill.explorer.follow import follow, search
from tokenmill.explorer.live import Live, engine_stats
from tokenmill.explorer.panels import panel
from tokenmill.explorer.progress import NoChart, draw
from tokenmill.explorer.stages import BLOCKS, block_status, model_folders
from tokenmill.figures import heatmaps

STATIC = Path(__file__).parent / "static"
PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
# An SVG opened on its own is a document: it may style itself but never run a script.
SVG_POLICY = "default-src 'none'; style-src 'unsafe-inline'"


def _svg(text: str) -> Response:
    return Response(text, media_type="image/svg+xml", headers={"Cache-Control": "no-cache"})


def _key_figures(run_dir: Path) -> dict[str, str]:
    """Each stage's one-line figure from the run's summary.json, by stage folder."""
    rows = read_json(run_dir / "summary.json", []) or []
    return {r["stage"]: r.get("figure", "") for r in rows if isinstance(r, dict) and "stage" in r}


def explorer_app(run_dir: str | Path, engine=None, *, model_name: str | None = None,
                 chat_url: str = "/v1/chat/completions", api_key: str | None = None,
                 allowed_hosts: Iterable[str] = ()) -> FastAPI:
    """The explorer over `run_dir`. With `engine` (an AsyncEngine) the deployment panel shows its
    requests and KV-cache blocks live, and the chat box posts to `chat_url` with `model_name`:
    the routes of the serving app this one is mounted on (see mount_explorer). It answers to
    loopback names and `allowed_hosts`; with `api_key`, every route needs it."""
    run_dir = Path(run_dir).resolve()
    if not run_dir.is_dir():
        raise TokenmillError(f"run folder not found: {run_dir}")
    live = Live(run_dir)
    engine_info = {"attached": engine is not None, "model": model_name, "chat_url": chat_url if engine else None}
    app = FastAPI(title="tokenmill explorer", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(Guard, allowed_hosts=allowed_hosts, api_key=api_key)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        svg = response.headers.get("content-type", "").startswith("image/svg+xml")
        response.headers["Content-Security-Policy"] = SVG_POLICY if svg else PAGE_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    @app.exception_handler(TokenmillError)
    async def user_error(request: Request, e: TokenmillError) -> JSONResponse:
        return JSONResponse({"error": str(e)}, status_code=403 if isinstance(e, OutsideRun) else 400)

    @app.exception_handler(NoChart)
    async def no_chart(request: Request, e: NoChart) -> JSONResponse:
        return JSONResponse({"error": str(e)}, status_code=404)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/api/run")
    def run() -> dict:
        figures = _key_figures(run_dir)
        return {
            "name": run_dir.name,
            "blocks": [{"number": b.number, "title": b.title, "status": block_status(run_dir, b),
                        "figure": "; ".join(figures[f] for f in b.folders if figures.get(f))} for b in BLOCKS],
            "handoffs": handoffs(run_dir),
            "models": model_folders(run_dir),
            "engine": engine_info,
        }

    @app.get("/api/panel/{number}")
    def get_panel(number: str) -> dict:
        if number not in {b.number for b in BLOCKS}:
            return JSONResponse({"error": f"no block {number!r}; the blocks are 01 to 08"}, status_code=404)
        return panel(run_dir, number, engine_info)

    @app.get("/api/chart/{number}/{name}.svg")
    def chart(number: str, name: str) -> Response:
        return _svg(draw(run_dir, number, name))

    @app.get("/api/file")
    def file(path: str = Query(..., description="a path inside the run folder")) -> FileResponse:
        found = inside(run_dir, path)
        kind = CONTENT_TYPES.get(found.suffix.lower())
        if kind is None:
            raise OutsideRun(f"the explorer does not serve {found.suffix or 'extension-less'} files")
        return FileResponse(found, media_type=kind)

    @app.post("/api/tokenize")
    def tokenize(text: str = Body(..., embed=True)) -> dict:
        return live.tokenize(text)

    @app.post("/api/attention")
    def attention(model: str = Body(...), prompt: str = Body(...)) -> dict:
        labels, probs = live.attention(model, prompt)
        return {"tokens": labels, "layers": int(probs.shape[0]), "heads": int(probs.shape[1])}

    @app.get("/api/attention.svg")
    def attention_svg(model: str, prompt: str, layer: int = 0) -> Response:
        labels, probs = live.attention(model, prompt)
        if not 0 <= layer < probs.shape[0]:
            raise TokenmillError(f"layer {layer} is outside 0..{probs.shape[0] - 1}")
        heads = {f"head {h}": p for h, p in enumerate(probs[layer])}
        return _svg(heatmaps(f"layer {layer}: attention of each head", heads, labels))

    @app.get("/api/documents")
    def documents(q: str = "") -> dict:
        return {"documents": search(run_dir, q)}

    @app.get("/api/document")
    def document(id: str = Query(..., description="a document id of 01_data")) -> dict:
        return follow(run_dir, id, live)

    @app.post("/api/compare")
    def compare(prompt: str = Body(..., embed=True)) -> dict:
        return live.compare(prompt)

    @app.get("/api/engine")
    def engine_state() -> dict:
        return {**engine_info, **engine_stats(engine)}

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def mount_explorer(app: FastAPI, run_dir: str | Path, path: str = "/explorer") -> FastAPI:
    """Mount the explorer of `run_dir` on a serving app made by `create_app`, at `path`, beside
    its API: the deployment panel then watches that app's engine and chats through its
    /v1/chat/completions. Mounted at "/", the explorer answers every path the API does not. It
    checks the same Host allow-list and API key as that app."""
    server = app.state.server
    explorer = explorer_app(run_dir, server.engine, model_name=server.model_name, **app.state.guard)
    path = "/" + path.strip("/")
    if path != "/":
        # The page names its routes relative to itself, so it must be opened as PATH/.
        app.add_api_route(path, lambda: RedirectResponse(path + "/"), include_in_schema=False)
    app.mount(path, explorer)
    return app

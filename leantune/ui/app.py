"""The dashboard's web app: server-rendered pages (Jinja2) whose scripts poll JSON endpoints; every answer is read
from the run folders at the time of the request. Errors come back as ``{"error": ...}`` and show in the page."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from leantune.errors import LeantuneError
from leantune.ui.compare_view import compare_runs
from leantune.ui.detail import run_detail
from leantune.ui.guard import LOOPBACK, AllowedHosts, RequestGuard, new_token
from leantune.ui.launch import Launcher
from leantune.ui.playground import MOUNT, Playground, served_name
from leantune.ui.runs import list_runs, resolve_run

logger = logging.getLogger("leantune.ui")
HERE = Path(__file__).resolve().parent


class LaunchRequest(BaseModel):
    config: str
    overrides: list[str] = []
    nproc: int = 1
    overwrite: bool = False


class ResumeRequest(BaseModel):
    max_steps: int | None = None


class ServeRequest(BaseModel):
    runs: list[str]


def create_app(runs: Path, allow: list[Path] | None = None, hosts: list[str] | None = None) -> FastAPI:
    """The dashboard over the run folders under ``runs``; launches accept configs under ``runs``' parent and
    ``allow``; the playground serves picked runs with leantune serve's engine at ``/serve``. It answers only
    requests whose ``Host`` is in ``hosts`` (``name:port``, or a bare name for any port; default: the loopback
    names), and state-changing ones only from its own pages (see :mod:`leantune.ui.guard`)."""
    root = Path(runs).resolve()
    token = new_token()
    launcher = Launcher(root, [Path(p) for p in allow or []])
    playground = Playground()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(playground.close)
        launcher.close()

    app = FastAPI(title="leantune ui", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.launcher, app.state.playground, app.state.csrf_token = launcher, playground, token
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    app.add_middleware(RequestGuard, hosts=AllowedHosts(LOOPBACK if hosts is None else hosts), token=token)

    @app.exception_handler(LeantuneError)
    async def leantune_error(request: Request, exc: LeantuneError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.exception_handler(KeyError)
    async def unknown_run(request: Request, exc: KeyError) -> JSONResponse:
        return JSONResponse({"error": f"no run {exc.args[0]!r} under {root}"}, status_code=404)

    @app.exception_handler(Exception)
    async def any_error(request: Request, exc: Exception) -> JSONResponse:
        logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"error": "internal error (the dashboard's log has the details)"}, status_code=500)

    def page(request: Request, template: str, **context: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, template, {"root": str(root), "csrf_token": token, **context})

    # ------------------------------------------------------------------------------------------ pages
    @app.get("/", response_class=HTMLResponse)
    def runs_page(request: Request) -> HTMLResponse:
        return page(request, "runs.html", configs=launcher.configs())

    @app.get("/run/{name:path}", response_class=HTMLResponse)
    def run_page(request: Request, name: str) -> HTMLResponse:
        return page(request, "run.html", name=name)

    @app.get("/compare", response_class=HTMLResponse)
    def compare_page(request: Request, runs: Annotated[list[str] | None, Query()] = None) -> HTMLResponse:
        return page(request, "compare.html", runs=runs or [])

    # ------------------------------------------------------------------------------------------ JSON
    @app.get("/api/runs")
    def api_runs() -> dict[str, Any]:
        return {"runs": [r.as_dict() for r in list_runs(root)], "launches": launcher.launches()}

    @app.get("/api/run/{name:path}")
    def api_run(name: str) -> dict[str, Any]:
        run_dir = resolve_run(root, name)
        return run_detail(root, run_dir, launcher.log_for(run_dir))

    @app.post("/api/launch")
    def api_launch(req: LaunchRequest) -> dict[str, Any]:
        overrides = [o.strip() for o in req.overrides if o.strip()]
        return launcher.train(req.config, overrides, req.nproc, req.overwrite)

    @app.post("/api/stop/{name:path}")
    def api_stop(name: str) -> dict[str, Any]:
        return {"stopped": launcher.stop(resolve_run(root, name))}

    @app.post("/api/resume/{name:path}")
    def api_resume(name: str, req: ResumeRequest) -> dict[str, Any]:
        return launcher.resume(resolve_run(root, name), req.max_steps)

    @app.get("/api/compare")
    def api_compare(runs: Annotated[list[str] | None, Query()] = None) -> dict[str, Any]:
        return compare_runs(root, [(name, resolve_run(root, name)) for name in runs or []])

    @app.get("/compare-files/{key}/{file}")
    def compare_file(key: str, file: str) -> FileResponse:
        try:
            path = (root / ".ui" / "compare" / key / file).resolve()
            found = path.is_relative_to(root / ".ui" / "compare") and path.is_file()
        except (OSError, ValueError):  # a name no file system takes
            found = False
        if not found:
            raise KeyError(f"compare file {key}/{file}")
        return FileResponse(path)

    @app.get("/playground", response_class=HTMLResponse)
    def playground_page(request: Request) -> HTMLResponse:
        return page(request, "playground.html", mount=MOUNT)

    @app.get("/api/playground")
    def api_playground() -> dict[str, Any]:
        finished = [r for r in list_runs(root) if r.status == "finished"]
        return {"served": playground.runs,
                "runs": [{"name": r.name, "served_as": served_name(r.name), "task": r.task, "method": r.method,
                          "model": r.model} for r in finished]}

    @app.post("/api/playground/serve")
    def api_playground_serve(req: ServeRequest) -> dict[str, Any]:
        return {"served": playground.serve([(name, resolve_run(root, name)) for name in req.runs])}

    app.mount(MOUNT, playground)
    return app

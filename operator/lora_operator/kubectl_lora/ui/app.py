"""The dashboard's web application (Starlette + Jinja2): pages, live updates, and actions.

Every read and write goes through the user's own kubeconfig (`Jobs`) and storage credentials
(`Objects`), so what a person sees and may do is what RBAC and the storage policy give them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import mimetypes
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from .. import actions, checkpoints, estimates
from ..errors import CliError
from ..kube import Jobs
from ..objects import Objects
from . import newjob, pages
from .live import JobFeed
from .upload import Uploads

HERE = Path(__file__).parent
CLUSTER_VIEW_SECONDS = 10.0
"""How long the other namespaces' jobs and the nodes, listed for the estimated starts, are reused."""
KEEPALIVE_SECONDS = 15.0
"""A comment line this often keeps proxies and the browser from closing an idle event stream."""


class Dashboard:
    """The routes, over one namespace's jobs.

    Args:
        jobs: The jobs, read and changed with the user's kubeconfig.
        objects: Storage, read with the user's credentials (previews, downloads).
    """

    def __init__(self, jobs: Jobs, objects: Objects):
        self.jobs = jobs
        self.objects = objects
        self.feed = JobFeed(jobs)
        self.templates = Jinja2Templates(directory=HERE / "templates")
        self._view: tuple[float, list[dict], list[dict] | None] | None = None
        self.uploads = Uploads(Path(tempfile.gettempdir()) / f"lora-ui-uploads-{os.getuid()}", objects.options)
        """Dataset folders from the New job page; kept across restarts so an upload resumes."""

    def app(self) -> Starlette:
        @contextlib.asynccontextmanager
        async def lifespan(_: Starlette) -> AsyncIterator[None]:
            await asyncio.to_thread(self.feed.start)
            yield
            await asyncio.to_thread(self.feed.stop)

        routes = [
            Route("/", self.jobs_page),
            Route("/fragments/jobs", self.jobs_rows),
            Route("/events", self.events),
            Route("/new", self.new_page),
            Route("/new", self.create, methods=["POST"]),
            Route("/jobs/{name}", self.job_page),
            Route("/jobs/{name}/fragment", self.job_fragment),
            Route("/jobs/{name}/loss", self.loss),
            Route("/jobs/{name}/preview", self.preview),
            Route("/jobs/{name}/download", self.download),
            Route("/jobs/{name}/{action:str}", self.act, methods=["POST"]),
            *self.uploads.routes(),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]
        return Starlette(routes=routes, lifespan=lifespan, exception_handlers={CliError: self.refused})

    # -- reads -------------------------------------------------------------------------------

    def _job(self, name: str) -> dict:
        """The job from the watch's cache, else from the API server (CliError when it is not there)."""
        return next((j for j in self.feed.snapshot() if j["metadata"]["name"] == name), None) or self.jobs.get(name)

    def _cluster_view(self) -> tuple[list[dict], list[dict] | None]:
        """Other namespaces' jobs and the nodes (as far as RBAC lets one list them), at most
        CLUSTER_VIEW_SECONDS old: every page render needs them, the watch covers only this namespace."""
        if self._view is None or time.monotonic() - self._view[0] > CLUSTER_VIEW_SECONDS:
            others = [j for j in self.jobs.queue_jobs([]) if j["metadata"].get("namespace") != self.jobs.namespace]
            self._view = (time.monotonic(), others, self.jobs.nodes())
        return self._view[1], self._view[2]

    def _starts(self, now: datetime) -> dict[str, datetime]:
        others, nodes = self._cluster_view()
        return estimates.queue_estimates(others + self.feed.snapshot(), nodes, now)

    def _summaries(self) -> list[dict]:
        now = datetime.now(UTC)
        starts = self._starts(now)
        jobs = sorted(self.feed.snapshot(), key=lambda j: j["metadata"]["name"])
        return [pages.job_summary(j, starts, now) for j in jobs]

    def _detail(self, name: str) -> dict:
        now = datetime.now(UTC)
        return pages.job_detail(self._job(name), self.jobs.events(name), self._starts(now), now)

    def _context(self, **values) -> dict:
        return {"namespace": self.jobs.namespace, "feed_error": self.feed.error, **values}

    # -- pages -------------------------------------------------------------------------------

    def jobs_page(self, request: Request) -> Response:
        return self.templates.TemplateResponse(request, "jobs.html", self._context(jobs=self._summaries()))

    def jobs_rows(self, request: Request) -> Response:
        return self.templates.TemplateResponse(request, "_jobs_rows.html", self._context(jobs=self._summaries()))

    def job_page(self, request: Request) -> Response:
        name = request.path_params["name"]
        return self.templates.TemplateResponse(request, "job.html", self._context(name=name, **self._detail(name)))

    def job_fragment(self, request: Request) -> Response:
        name = request.path_params["name"]
        return self.templates.TemplateResponse(request, "_job_live.html",
                                               self._context(name=name, **self._detail(name)))

    def loss(self, request: Request) -> Response:
        job = self._job(request.path_params["name"])
        return JSONResponse(pages.loss_series(pages.status_of(job), self.feed.loss_points(job["metadata"]["uid"])))

    def preview(self, request: Request) -> Response:
        """One preview image, read from storage; only the job's own preview URIs are served."""
        name, uri = request.path_params["name"], request.query_params.get("uri", "")
        if uri not in pages.preview_uris(pages.status_of(self._job(name))):
            raise CliError(f"ltj/{name} has no preview {uri!r}")
        media = mimetypes.guess_type(uri)[0] or "application/octet-stream"
        return Response(self.objects.get_bytes(uri), media_type=media, headers={"Cache-Control": "max-age=3600"})

    def download(self, request: Request) -> Response:
        """A checkpoint in one format (kohya: its file; diffusers: its folder as a zip)."""
        name = request.path_params["name"]
        status = pages.status_of(self._job(name))
        chosen = request.query_params.get("checkpoint") or checkpoints.default_checkpoint(status, None)
        record = checkpoints.choose_record(status, chosen, request.query_params.get("format") or None)
        folder = Path(tempfile.mkdtemp(prefix="lora-ui-"))
        cleanup = BackgroundTask(shutil.rmtree, folder, ignore_errors=True)
        try:
            path = self.objects.download(record.uri, folder)
            if path.is_dir():
                path = Path(shutil.make_archive(str(folder / f"{name}-{chosen}-{record.format}"), "zip", path))
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        filename = f"{name}-{chosen}-{path.name}" if path.suffix != ".zip" else path.name
        return FileResponse(path, filename=filename, background=cleanup)

    def new_page(self, request: Request) -> Response:
        templates = newjob.template_choices(self.jobs.templates())
        return self.templates.TemplateResponse(request, "new.html",
                                               self._context(templates=templates, fields=newjob.FIELDS))

    async def create(self, request: Request) -> Response:
        """POST /new {name, template, fields}: check as the operator will resolve it, then create."""
        try:
            form = await request.json()
        except ValueError:
            return JSONResponse({"error": "the request body is not JSON"}, status_code=400)
        if not isinstance(form, dict):
            return JSONResponse({"error": "the request body is not a JSON object"}, status_code=400)

        def create() -> dict:
            return self.jobs.create(newjob.job_body(form, self.jobs.namespace, self.jobs.template))

        name = (await asyncio.to_thread(create))["metadata"]["name"]
        return JSONResponse({"message": f"ltj/{name} created", "url": f"/jobs/{name}"})

    # -- live updates --------------------------------------------------------------------------

    async def events(self, request: Request) -> Response:
        """Server-sent events: one per change the watch sees, ``{"name": job}`` (empty name: relisted)."""
        queue = self.feed.subscribe()

        async def stream() -> AsyncIterator[str]:
            try:
                yield ": watching\n\n"
                while not await request.is_disconnected():
                    try:
                        name = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    yield f"data: {json.dumps({'name': name})}\n\n"
            finally:
                self.feed.unsubscribe(queue)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    # -- actions --------------------------------------------------------------------------------

    async def act(self, request: Request) -> Response:
        """POST select {checkpoint}, cancel, suspend, resume or retrain {set, name}: the CLI's checks and sentence."""
        name, action = request.path_params["name"], request.path_params["action"]
        try:
            body = await request.json() if await request.body() else {}
        except ValueError:
            return JSONResponse({"error": "the request body is not JSON"}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"error": "the request body is not a JSON object"}, status_code=400)
        if action == "retrain":
            changes = [line.strip() for line in str(body.get("set") or "").splitlines() if line.strip()]
            message, created = await asyncio.to_thread(
                actions.retrain, self.jobs, name, changes, str(body.get("name") or "").strip() or None)
            return JSONResponse({"message": message, "url": f"/jobs/{created}"})
        checkpoint = str(body.get("checkpoint") or "").strip()
        handlers = {"select": partial(actions.select, self.jobs, name, checkpoint),
                    "cancel": partial(actions.cancel, self.jobs, name),
                    "suspend": partial(actions.suspend, self.jobs, name, True),
                    "resume": partial(actions.suspend, self.jobs, name, False)}
        if action not in handlers:
            return JSONResponse({"error": f"no action {action!r} ({', '.join(handlers)})"}, status_code=404)
        return JSONResponse({"message": await asyncio.to_thread(handlers[action])})

    async def refused(self, request: Request, err: Exception) -> Response:
        """A CliError: the CLI's own sentence, as JSON for the page's scripts, else as a page."""
        status = 404 if " not found in namespace " in str(err) or "has no preview" in str(err) else 400
        if request.method == "POST" or request.url.path.endswith(("/loss", "/fragment")):
            return JSONResponse({"error": str(err)}, status_code=status)
        return self.templates.TemplateResponse(request, "error.html", self._context(error=str(err)),
                                               status_code=status)


def create_app(jobs: Jobs, objects: Objects) -> Starlette:
    """The dashboard over ``jobs``'s namespace."""
    return Dashboard(jobs, objects).app()

"""The ASGI application: console pages, actions, ``/metrics``, health and STOW-RS routes.

Pages are plain server-rendered HTML (Jinja2 templates beside this module, no front-end build) that work
without JavaScript. Page handlers are synchronous (Starlette runs them in its thread pool, as SQLite
and fsync want); the STOW-RS handler is asynchronous so that it can read the body as it streams.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from samie_node.errors import SamieNodeError
from samie_node.http import pages
from samie_node.http.auth import SESSION_COOKIE, Guard, Refusal, load_token
from samie_node.http.metrics import NodeMetrics
from samie_node.http.stow import receive_stow
from samie_node.net.send import Sender, calling_ae_title, echo
from samie_node.node import Node
from samie_node.reprocess import reprocess
from samie_node.resend import resend
from samie_node.uids import require_uid

LOG = logging.getLogger("samie_node.http")
TEMPLATES = Path(__file__).with_name("templates")


@dataclass
class Console:
    """What the handlers share: the node, its sender, the guard, the metrics and the templates."""

    node: Node
    sender: Sender
    guard: Guard
    metrics: NodeMetrics
    templates: Jinja2Templates
    errors: pages.RecentErrors
    echoes: dict[str, str] = field(default_factory=dict)

    def render(self, request: Request, name: str, status: int = 200, **context: Any) -> Response:
        context.setdefault("logged_in", self.guard.credential(request) is not None)
        context.setdefault("token_configured", self.guard.configured)
        context["show_phi"] = self.node.settings.http.show_phi
        return self.templates.TemplateResponse(request, name, context, status_code=status)

    def refused(self, request: Request, action: str, refusal: Refusal) -> Response:
        host = request.client.host if request.client else ""
        LOG.warning("http action refused action=%s peer=%s: %s", action, host, refusal.reason)
        self.node.audit.record("http_action_refused", action=action, reason=refusal.reason, peer_host=host)
        if action == "stow":
            return JSONResponse({"error": refusal.reason}, status_code=refusal.status)
        return self.render(request, "message.html", refusal.status, title="Refused", message=refusal.reason)

    def done(self, request: Request, action: str, message: str, **fields: Any) -> Response:
        host = request.client.host if request.client else ""
        credential = self.guard.credential(request) or ""
        self.node.audit.record("http_action", action=action, by=credential, peer_host=host, **fields)
        return self.render(request, "message.html", title="Done", message=message)


def _study_uid(request: Request) -> str:
    return require_uid(request.path_params["study"], "Study Instance UID")


def build_routes(console: Console) -> list[Route]:
    """Every route of the application, each a small closure over ``console``."""
    node = console.node

    def overview(request: Request) -> Response:
        return console.render(request, "overview.html", **pages.overview(node, console.echoes, console.errors))

    def studies(request: Request) -> Response:
        query = request.query_params
        page = int(query["page"]) if query.get("page", "").isdigit() else 1
        data = pages.studies_page(node, query.get("state", ""), query.get("since", ""), page)
        return console.render(request, "studies.html", **data)

    def study(request: Request) -> Response:
        try:
            view = pages.study_view(node, _study_uid(request))
        except SamieNodeError:
            view = None
        if view is None:
            return console.render(request, "message.html", 404, title="Not found", message="no such study")
        destinations = [peer.label for peer in node.settings.send.destinations]
        return console.render(request, "study.html", view=view, destinations=destinations)

    def preview(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            uid = _study_uid(request)
        except SamieNodeError:
            return Response(status_code=404)
        path = node.spool.outbox_dir / uid / "previews" / name
        if not pages.PREVIEW_NAME.match(name) or not path.is_file():
            return Response(status_code=404)
        return FileResponse(path, media_type="image/png")

    def failures(request: Request) -> Response:
        destinations = [peer.label for peer in node.settings.send.destinations]
        return console.render(request, "failures.html", destinations=destinations, **pages.failures(node))

    def audit(request: Request) -> Response:
        data = pages.audit_events(node.audit.path, request.query_params.get("event", ""))
        return console.render(request, "audit.html", **data)

    def metrics(request: Request) -> Response:
        return Response(console.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    def healthz(request: Request) -> Response:
        return JSONResponse({"status": "alive", "uptime_s": round(time.time() - node.started_at, 1)})

    def readyz(request: Request) -> Response:
        checks = node.readiness()
        ready = all(check.ok for check in checks)
        body = {"ready": ready, "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in checks}}
        return JSONResponse(body, status_code=200 if ready else 503)

    async def stow(request: Request) -> Response:
        refusal = console.guard.check(request, allow_session=False)
        if refusal is not None:
            return await run_in_threadpool(console.refused, request, "stow", refusal)
        settings = node.settings
        return await receive_stow(
            request, node.receiver, settings.http.max_request_bytes, settings.limits.max_instance_bytes
        )

    return [
        Route("/", overview),
        Route("/studies", studies),
        Route("/studies/{study}", study),
        Route("/studies/{study}/previews/{name}", preview),
        Route("/failures", failures),
        Route("/audit", audit),
        Route("/metrics", metrics),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/dicomweb/studies", stow, methods=["POST"]),
        *action_routes(console),
    ]


def _resend(console: Console, request: Request, form: dict[str, str]) -> Response:
    node = console.node
    states: Any = [form["state"]] if form.get("state") in ("dead", "retrying") else []
    study = form.get("study", "")
    try:
        target = node.settings.send.destination(form["to"]) if form.get("to") else None
        outputs = node.spool.select_outputs(study_instance_uids=[study] if study else [], states=states)
        summary = resend(node.spool, console.sender, outputs, to=target)
    except SamieNodeError as exc:
        return console.render(request, "message.html", 400, title="Not re-sent", message=str(exc))
    message = f"re-sent {summary.sent} of {len(outputs)} result(s); {summary.failed} not delivered"
    details = "; ".join(f"{sop} to {dest}: {error}" for sop, dest, error in summary.failures[:5])
    return console.done(
        request,
        "resend",
        message + (f" ({details})" if details else ""),
        study_instance_uid=study,
        to=form.get("to", ""),
        sent=summary.sent,
        failed=summary.failed,
        outcome="done" if not summary.failed else "partial",
    )


def _reprocess(console: Console, request: Request, form: dict[str, str]) -> Response:
    spool = console.node.spool
    study = form.get("study", "")
    summary = reprocess(spool, [study] if study else [s.study_instance_uid for s in spool.studies("failed")])
    skipped = "; ".join(f"{uid}: {why}" for uid, why in summary.skipped)
    message = f"queued {len(summary.queued)} study(ies) for processing" + (f"; left alone {skipped}" if skipped else "")
    return console.done(request, "reprocess", message, studies=summary.queued, outcome="done")


def _echo(console: Console, request: Request, form: dict[str, str]) -> Response:
    settings = console.node.settings
    label = form.get("destination", "")
    try:
        ms = echo(settings.send.peer(label), calling_ae_title=calling_ae_title(settings), timeout_s=10)
        result = f"C-ECHO success in {ms:.0f} ms at {time.strftime('%H:%M:%S')}"
    except SamieNodeError as exc:
        result = f"C-ECHO failed at {time.strftime('%H:%M:%S')}: {exc}"
    console.echoes[label] = result
    return console.done(request, "echo", f"{label}: {result}", destination=label, outcome="done")


#: Actions that change state: name -> the function run (in the thread pool) once the guard let it through.
ACTIONS = {"resend": _resend, "reprocess": _reprocess, "echo": _echo}


def action_routes(console: Console) -> list[Route]:
    """Login, logout and the actions that change state (token and Origin checked, each audited)."""

    def action(name: str) -> Any:
        async def handle(request: Request) -> Response:
            refusal = console.guard.check(request)
            if refusal is not None:
                return await run_in_threadpool(console.refused, request, name, refusal)
            form = {key: str(value).strip() for key, value in (await request.form()).items()}
            return await run_in_threadpool(ACTIONS[name], console, request, form)

        return handle

    async def login(request: Request) -> Response:
        if request.method == "GET":
            return console.render(request, "login.html")
        form = await request.form()
        if not console.guard.same_origin(request) or not console.guard.token_matches(str(form.get("token", ""))):
            refusal = Refusal(401, "wrong token" if console.guard.configured else "no http token is configured")
            return await run_in_threadpool(console.refused, request, "login", refusal)
        response = RedirectResponse("/failures", status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            console.guard.session_value,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        console.node.audit.record("http_login", peer_host=request.client.host if request.client else "")
        return response

    async def logout(request: Request) -> Response:
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    return [
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        *(Route(f"/actions/{name}", action(name), methods=["POST"]) for name in ACTIONS),
    ]


def create_app(node: Node, sender: Sender) -> tuple[Starlette, Console]:
    """The application for ``node``; ``sender`` delivers re-sent results (the node's own).

    Raises
    ------
    ConfigError
        If the token file cannot be read.
    """
    errors = pages.RecentErrors()
    logging.getLogger("samie_node").addHandler(errors)
    templates = Jinja2Templates(directory=str(TEMPLATES))
    templates.env.filters["when"] = lambda t: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else ""
    templates.env.filters["size"] = lambda n: f"{n / 1024**2:,.1f} MiB" if n >= 1024**2 else f"{n / 1024:,.0f} KiB"
    templates.env.filters["gib"] = lambda n: f"{n / 1024**3:,.2f} GiB"
    console = Console(node, sender, Guard(load_token(node.settings.http)), NodeMetrics(node), templates, errors)
    return Starlette(routes=build_routes(console)), console

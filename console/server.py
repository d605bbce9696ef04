"""``metaemg-console``: the clinician's console, a local web app (aiohttp, one page, a WebSocket).

    metaemg-console [--config FILE] [--control ENDPOINT] [--monitor ENDPOINT] [--port 8765]
                    [--host 127.0.0.1] [--allow-remote --tls-cert FILE --tls-key FILE [--public-name NAME]]
                    [--state-dir DIR] [--calibration-config FILE] [--token-file FILE]

Prints, as its first line on stdout, the URL to open (with the token). It talks to the daemon only
through the monitor stream (SUB) and the control socket (REQ, :mod:`controller.control`), and runs
``metaemg-calibrate`` for calibrations (:mod:`.jobs`).

Security (docs/console.md):

- bound to loopback unless ``--allow-remote`` is given, which needs TLS (``--tls-cert`` and
  ``--tls-key``: ``https`` and ``wss`` only) and the name the browser will use (``--public-name``;
  a wildcard address without one is refused);
- no ambient credential: the printed URL carries the token in its fragment (``#token=``, never
  sent to a server); the page keeps it in ``sessionStorage`` and sends it in the
  ``X-Console-Token`` header of every API request and in the WebSocket's first message (a socket
  that has not sent it within :data:`WS_AUTH_S` is closed). No cookie: a page on another port of
  the same host has nothing to send along. The page and its static files carry no secret and are
  served to anyone who names the right Host; everything else answers 401 without the token. The
  session report opens with a one-time ticket the page asks for (:data:`TICKET_S`);
- requests that change something (POST) and the WebSocket must come from the console's own page
  (its ``Origin``), else 403; the ``Host`` header must name the address the console serves on
  (no DNS rebinding), else 403;
- every answer carries a Content-Security-Policy (:data:`CSP`): no inline script, nothing from
  another origin, no framing;
- installs and rollbacks name what the page showed (the clip's digest; the model ids and, across
  patients, both patients) and are refused (409) when it is no longer what would happen.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import secrets
import ssl
import sys
import time
from pathlib import Path

import zmq
import zmq.asyncio

from console.hub import Hub
from console.jobs import Busy, Jobs
from metaemg.cli import entry_point
from metaemg.errors import ConfigError

STATIC = Path(__file__).with_name("static")
DEFAULT_PORT = 8765
URL_FILE = "/run/myhand-console/url"  # where the installed console writes its URL (myhand-console.service)
WS_AUTH_S = 1.0  # a WebSocket that has not sent the token within this is closed
TICKET_S = 30.0  # how long a session report's one-time ticket is valid
WS_UNAUTHORISED = 4401  # the WebSocket's close code without the token
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'"
)
PUSH_S = 0.1  # the page is redrawn from a view pushed ten times a second
CONTROLS = ("pause", "resume", "clear", "stop")  # what the page's buttons may ask the daemon


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="metaemg-console",
        description="The clinician's console: the daemon's state, controls and calibration in a browser page.",
    )
    p.add_argument("--config", help="the controller's YAML configuration (where its sockets are)")
    p.add_argument("--control", metavar="ENDPOINT", help="the daemon's control socket (default: from the config)")
    p.add_argument("--monitor", metavar="ENDPOINT", help="the daemon's monitor stream (default: from the config)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1, loopback only)")
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow --host to be an address other than loopback (needs --tls-cert and --tls-key)",
    )
    p.add_argument("--tls-cert", metavar="FILE", help="TLS certificate chain (PEM): serve https and wss")
    p.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM)")
    p.add_argument(
        "--public-name",
        metavar="NAME",
        help="the host name browsers use to reach the console (its certificate's name); needed with a wildcard "
        "--host such as 0.0.0.0",
    )
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free port)")
    p.add_argument("--state-dir", metavar="DIR", help="the calibration's state directory (as metaemg-calibrate)")
    p.add_argument(
        "--calibration-config", metavar="FILE", help="metaemg-calibrate's YAML configuration for calibrations"
    )
    p.add_argument(
        "--token-file",
        metavar="FILE",
        help="where to write the token, mode 0600 (default: <runtime dir>/console.token)",
    )
    p.add_argument(
        "--url-file",
        metavar="FILE",
        help="also write the page's URL with its token there, mode 0640, for the members of the service's group "
        f"(metaemg-console url reads it; the service writes {URL_FILE})",
    )
    return p


def print_url(argv: list[str]) -> int:
    """``metaemg-console url [--url-file FILE]``: the running console's URL with its token, for a
    member of the service's group (the installed console writes it to :data:`URL_FILE`)."""
    p = argparse.ArgumentParser(prog="metaemg-console url", description="print the running console's URL")
    p.add_argument("--url-file", metavar="FILE", default=URL_FILE, help=f"default {URL_FILE}")
    args = p.parse_args(argv)
    try:
        url = Path(args.url_file).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(
            f"{args.url_file}: no console URL: is the console running? (systemctl status myhand-console)"
        ) from None
    except PermissionError:
        raise ConfigError(
            f"{args.url_file}: not readable by this user: the clinicians' accounts are in group myhand "
            "(sudo usermod -aG myhand USER, then log in again)"
        ) from None
    print(url)
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Console:
    """The web app's state: the hub fed by the monitor stream, the jobs, the token and sockets."""

    def __init__(
        self,
        *,
        control: str,
        monitor: str,
        token: str,
        calibrate_args: list[str],
        state_dir: Path,
    ) -> None:
        self.control, self.monitor, self.token = control, monitor, token
        self.state_dir = state_dir
        self.hub = Hub()
        self.jobs = Jobs(calibrate_args)
        self.origins: set[str] = set()
        self.hosts: set[str] = set()
        self._tickets: dict[str, float] = {}  # one-time session-report tickets: ticket -> expiry (monotonic)
        self._ctx = zmq.asyncio.Context()
        self._tasks: list[asyncio.Task] = []

    # -- the app -----------------------------------------------------------------------------------
    def app(self):
        from aiohttp import web

        app = web.Application(middlewares=[self._guard])
        app.add_routes(
            [
                web.get("/", self.page),
                web.get("/ws", self.websocket),
                web.get("/report", self.report),
                web.get("/api/view", self.api_view),
                web.get("/api/models", self.api_models),
                web.get("/api/instructions", self.api_instructions),
                web.post("/api/report", self.api_report_ticket),
                web.post("/api/control", self.api_control),
                web.post("/api/calibrate", self.api_calibrate),
                web.post("/api/calibrate/cancel", self.api_cancel),
                web.post("/api/operating-point", self.api_operating_point),
                web.post("/api/session", self.api_session),
                web.post("/api/install", self.api_install),
                web.post("/api/rollback", self.api_rollback),
                web.static("/static", STATIC, follow_symlinks=False),
            ]
        )
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    def serving_on(self, host: str, port: int, *, public_name: str | None = None, tls: bool = False) -> str:
        """The address the page is served on: the only Host and Origin accepted. Returns the base URL."""
        if public_name is not None:
            names = {public_name}
        elif _is_loopback(host):
            names = {host, "127.0.0.1", "localhost"}
        else:
            names = {host}
        names = {f"[{n}]" if ":" in n else n for n in names}
        scheme = "https" if tls else "http"
        self.hosts = {f"{n}:{port}" for n in names}
        self.origins = {f"{scheme}://{h}" for h in self.hosts}
        shown = public_name or host
        return f"{scheme}://{f'[{shown}]' if ':' in shown else shown}:{port}"

    # -- security ----------------------------------------------------------------------------------
    def _token_ok(self, supplied: str | None) -> bool:
        return supplied is not None and hmac.compare_digest(supplied.encode(), self.token.encode())

    def _ticket_ok(self, ticket: str | None) -> bool:
        """A session report's one-time ticket: valid once, within :data:`TICKET_S`."""
        now = time.monotonic()
        self._tickets = {t: until for t, until in self._tickets.items() if until > now}
        return ticket is not None and self._tickets.pop(ticket, None) is not None

    @property
    def _guard(self):
        from aiohttp import web

        @web.middleware
        async def guard(request, handler):
            response = await self._check(request)
            if response is None:
                response = await handler(request)
            if not response.prepared:  # a WebSocket's handshake has gone out already
                response.headers["Content-Security-Policy"] = CSP
                response.headers["Cache-Control"] = "no-store"
                response.headers["X-Frame-Options"] = "DENY"
                response.headers["X-Content-Type-Options"] = "nosniff"
                response.headers["Referrer-Policy"] = "no-referrer"
            return response

        return guard

    async def _check(self, request):
        """None when ``request`` may go on, else the refusal (see the module docstring)."""
        from aiohttp import web

        if self.hosts and request.headers.get("Host") not in self.hosts:
            return web.Response(status=403, text="forbidden: unexpected Host header\n")
        path = request.path
        origin = request.headers.get("Origin")
        must_name_origin = request.method not in ("GET", "HEAD") or path == "/ws"
        if (must_name_origin or origin is not None) and origin not in self.origins:
            return web.Response(status=403, text="forbidden: a request from another page (Origin)\n")
        if path in ("/", "/ws") or path.startswith("/static/"):
            return None  # no secret there; the WebSocket authenticates in its first message
        if path == "/report" and self._ticket_ok(request.query.get("ticket")):
            return None
        if not self._token_ok(request.headers.get("X-Console-Token")):
            return web.Response(
                status=401,
                text="unauthorised: open the URL metaemg-console printed (it carries the token), then use the page\n",
            )
        return None

    # -- the monitor stream ------------------------------------------------------------------------
    async def _start(self, app) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(self._subscribe(), name="monitor"))

    async def _stop(self, app) -> None:
        await self.jobs.close()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._ctx.term()

    async def _subscribe(self) -> None:
        """Feed the hub from the monitor stream (:func:`controller.monitor.subscribe`: an ``ipc://``
        socket only once it is there, in a trusted directory)."""
        from controller.monitor import subscribe

        while True:
            try:
                sock = subscribe(self._ctx, self.monitor)
            except ConfigError as exc:
                self.hub.problem, sock = str(exc), None
            if sock is not None:
                break
            await asyncio.sleep(0.5)
        self.hub.problem = None
        try:
            while True:
                frames = await sock.recv_multipart()  # type: ignore[misc]  # an asyncio context's socket
                if len(frames) != 2:
                    continue
                try:
                    msg = json.loads(frames[1])
                except ValueError:
                    continue
                self.hub.feed(frames[0].decode("utf-8", "replace"), msg, time.monotonic())
        finally:
            sock.close(0)

    # -- pages -------------------------------------------------------------------------------------
    async def page(self, request):
        from aiohttp import web

        return web.FileResponse(STATIC / "index.html")

    async def report(self, request):
        from aiohttp import web

        from console.report import session_report

        html = session_report(self.hub, self.jobs, self._models())
        return web.Response(text=html, content_type="text/html")

    async def websocket(self, request):
        from aiohttp import WSMsgType, web

        ws = web.WebSocketResponse(heartbeat=10)
        await ws.prepare(request)
        try:
            first = await ws.receive(timeout=WS_AUTH_S)
            token = json.loads(first.data).get("token") if first.type == WSMsgType.TEXT else None
        except (TimeoutError, ValueError, AttributeError, RuntimeError):
            token = None
        if not self._token_ok(token if isinstance(token, str) else None):
            await ws.close(code=WS_UNAUTHORISED, message=b"unauthorised: no token in the first message")
            return ws
        cursor = max(0, self.hub.emg_next - 400)
        try:
            while not ws.closed:
                view = self._view()
                cursor, samples = self.hub.emg_since(cursor)
                view["emg"] = {"first": cursor, "samples": samples}
                cursor += len(samples)
                await ws.send_str(json.dumps(view, allow_nan=False, default=str))
                try:
                    await ws.receive(timeout=PUSH_S)
                except TimeoutError:
                    pass
        except (ConnectionResetError, RuntimeError, ValueError):
            pass
        return ws

    def _view(self) -> dict:
        view = self.hub.view(time.monotonic())
        job = self.jobs.current
        view["job"] = None if job is None else job.to_dict()
        view["job_running"] = self.jobs.running()
        session = view.get("session")
        patient = session.get("patient") if isinstance(session, dict) else None
        # whether a calibration could start (for the patient in the session, or one to be entered)
        view["calibration_blocked"] = calibration_blocked(view, patient or "(entered)")
        return view

    # -- API ---------------------------------------------------------------------------------------
    async def api_view(self, request):
        from aiohttp import web

        return web.json_response(self._view())

    async def api_models(self, request):
        from aiohttp import web

        return web.json_response(self._models())

    async def api_instructions(self, request):
        from aiohttp import web

        from calibration.protocol import INSTRUCTIONS

        return web.json_response(INSTRUCTIONS)

    async def api_report_ticket(self, request):
        """A one-time ticket for the session report, opened as a page of its own (to print)."""
        from aiohttp import web

        ticket = secrets.token_urlsafe(24)
        self._tickets[ticket] = time.monotonic() + TICKET_S
        return web.json_response({"ok": True, "url": f"/report?ticket={ticket}"})

    def _models(self) -> dict:
        from calibration.store import Store

        store = Store(self.state_dir)
        current, previous = store.describe(store.current), store.describe(store.previous)
        warning = patients = None
        if previous is not None and not previous["calibrated"]:
            warning = (
                f"Rolling back returns to the uncalibrated base model {previous['model_id']}: it decides nothing, "
                "so the hand will not move until the next calibration."
            )
        elif previous is not None and (current or {}).get("patient") != previous["patient"]:
            now, back = (current or {}).get("patient"), previous["patient"]
            patients = [now, back]
            warning = (
                f"Rolling back gives patient {now or '(none given)'} the model calibrated for patient "
                f"{back or '(none given)'}."
            )
        return {
            "state_dir": str(self.state_dir),
            "current": current,
            "previous": previous,
            "rollback_warning": warning,
            "rollback_patients": patients,
            "history": store.history_entries()[-20:] if store.history.parent.is_dir() else [],
        }

    async def _body(self, request) -> dict:
        try:
            body = await request.json()
        except ValueError:
            body = None
        return body if isinstance(body, dict) else {}

    async def api_control(self, request):
        from aiohttp import web

        from controller.control import ControlError
        from controller.control import request as control_request

        cmd = (await self._body(request)).get("cmd")
        if cmd not in CONTROLS:
            return web.json_response({"ok": False, "error": f"cmd must be one of {', '.join(CONTROLS)}"}, status=400)
        try:
            answer = await asyncio.to_thread(control_request, self.control, {"cmd": cmd}, timeout_s=2.0)
        except (ControlError, ConfigError) as exc:
            return web.json_response({"ok": False, "error": str(exc)}, status=502)
        return web.json_response(answer)

    async def api_session(self, request):
        """Open a session for ``patient`` or ``end`` it (the controller's ``session`` command: the
        patient's newest model is loaded and the hand held until the clinician keeps it)."""
        from aiohttp import web

        from controller.control import ControlError
        from controller.control import request as control_request
        from metaemg.patients import check_patient

        body = await self._body(request)
        if body.get("end") is True:
            req: dict = {"cmd": "session", "end": True}
        else:
            try:
                patient = check_patient(str(body.get("patient") or "").strip() or None)
            except ConfigError as exc:
                return _error(str(exc), 400)
            if patient is None:
                return _error("enter the patient's id (a pseudonym such as P012) to open a session", 400)
            req = {"cmd": "session", "patient": patient}
        if self.jobs.running():
            return _error("a calibration is running: wait for it or cancel it first", 409)
        try:
            answer = await asyncio.to_thread(control_request, self.control, req, timeout_s=10.0)
        except (ControlError, ConfigError) as exc:
            return web.json_response({"ok": False, "error": str(exc)}, status=502)
        return web.json_response(answer)

    async def api_calibrate(self, request):
        """A live calibration: for the open session's patient (with sessions), else for the
        ``patient`` given, or an explicit anonymous ``rehearsal``; only with the controller running
        (its monitor stream carries the cues to this page). :func:`calibration_blocked` says why not."""
        from calibration.store import check_patient

        body = await self._body(request)
        try:
            patient = check_patient(str(body.get("patient") or "").strip() or None)
        except ConfigError as exc:
            return _error(str(exc), 400)
        view = self._view()
        session = view.get("session")
        if isinstance(session, dict) and session.get("patient"):
            patient = session["patient"]  # the session's: the controller refuses any other
        why = calibration_blocked(view, patient, rehearsal=body.get("rehearsal") is True)
        if why is not None:
            return _error(why, 409)
        args = [] if patient is None else ["--patient", patient]  # it records the controller's own armband
        cycles = body.get("cycles")
        if cycles is not None:
            if not isinstance(cycles, int) or isinstance(cycles, bool) or not 2 <= cycles <= 10:
                return _error(f"cycles must be an integer in 2..10, got {cycles!r}", 400)
            args += ["--cycles", str(cycles)]
        return self._start_job("calibrate", args, patient)

    async def api_install(self, request):
        """Install the last refused calibration's model anyway (the clinician confirmed): the same
        clip again with ``--force``. The page names the clip it showed (``clip_sha256``): a result
        another tab produced since is not the one installed."""
        body = await self._body(request)
        job = self.jobs.current
        if body.get("confirm") is not True:
            return _error("installing a model the gate refused needs confirm: true", 400)
        if job is None or job.kind != "calibrate" or job.state != "refused" or not (job.result or {}).get("clip"):
            return _error("nothing to install: the last calibration was not refused by the gate", 409)
        result: dict = job.result  # type: ignore[assignment]
        clip = Path(str(result["clip"]))
        shown = body.get("clip_sha256")
        if not isinstance(shown, str) or shown != result.get("clip_sha256"):
            return _error(
                "the refused calibration on the page is not the last one (another page started one since): "
                "nothing installed; look at the result again",
                409,
            )
        try:
            digest = hashlib.sha256(clip.read_bytes()).hexdigest()
        except OSError as exc:
            return _error(f"{clip}: cannot read the clip: {exc.strerror or exc}", 409)
        if digest != shown:
            return _error(f"{clip}: the clip changed since it was recorded: nothing installed", 409)
        args = ["--from-recording", str(clip), "--force"]
        if job.patient:
            args += ["--patient", job.patient]
        return self._start_job("install", args, job.patient)

    async def api_operating_point(self, request):
        """Calibrate again, at another operating point (``point``), from the clip of a calibration
        of this session (named by the ``clip_sha256`` the page showed, checked against the file):
        the same clip through the gate again, for the same patient."""
        from metaemg.feathead import OPERATING_POINTS

        body = await self._body(request)
        point, shown = body.get("point"), body.get("clip_sha256")
        if point not in OPERATING_POINTS:
            return _error(f"point must be one of {', '.join(OPERATING_POINTS)}, got {point!r}", 400)
        job = next(
            (
                j
                for j in reversed(self.jobs.history)
                if j.kind == "calibrate" and j.state in ("done", "refused") and (j.result or {}).get("clip")
            ),
            None,
        )
        if job is None or not isinstance(shown, str) or shown != (job.result or {}).get("clip_sha256"):
            return _error("no calibration of that clip in this session to take another operating point from", 409)
        clip = Path(str((job.result or {})["clip"]))
        try:
            if hashlib.sha256(clip.read_bytes()).hexdigest() != shown:
                return _error(f"{clip}: the clip changed since it was recorded: nothing calibrated", 409)
        except OSError as exc:
            return _error(f"{clip}: cannot read the clip: {exc.strerror or exc}", 409)
        args = ["--from-recording", str(clip), "--operating-point", point]
        if job.patient:
            args += ["--patient", job.patient]
        return self._start_job("calibrate", args, job.patient)

    async def api_rollback(self, request):
        """Roll back to the model the page showed: ``to_model`` (previous) and ``from_model``
        (current) must still be those; to the uncalibrated base model needs ``to_uncalibrated``;
        to another patient's model, ``across_patients`` naming both (current's, previous's)."""
        body = await self._body(request)
        if body.get("confirm") is not True:
            return _error("a rollback needs confirm: true", 400)
        models = self._models()
        current, previous = models["current"] or {}, models["previous"] or {}
        if (body.get("from_model"), body.get("to_model")) != (current.get("model_id"), previous.get("model_id")):
            return _error(
                f"the models changed since the page showed them (now current {current.get('model_id')}, previous "
                f"{previous.get('model_id')}): nothing rolled back; look again and confirm",
                409,
            )
        args = ["--rollback", "--rollback-to", str(previous.get("model_id"))]
        if models["rollback_patients"] is not None:
            if body.get("across_patients") != models["rollback_patients"]:
                return _error(models["rollback_warning"] + " Confirm with across_patients naming both.", 409)
            now, back = models["rollback_patients"]
            args += ["--across-patients", f"{now or '-'},{back or '-'}"]
        elif models["rollback_warning"]:
            if body.get("to_uncalibrated") is not True:
                return _error(models["rollback_warning"] + " Confirm with to_uncalibrated: true.", 409)
            args.append("--force")
        return self._start_job("rollback", args, None)

    async def api_cancel(self, request):
        from aiohttp import web

        job = self.jobs.current
        cancelled = job is not None and self.jobs.running() and job.cancel()
        return web.json_response({"ok": cancelled})

    def _start_job(self, kind: str, args: list[str], patient: str | None):
        from aiohttp import web

        try:
            job = self.jobs.start(kind, args, patient)
        except Busy as exc:
            return _error(str(exc), 409)
        return web.json_response({"ok": True, "job": job.to_dict()})


def calibration_blocked(view: dict, patient: str | None, *, rehearsal: bool = False) -> str | None:
    """Why a calibration cannot start now (None: it can): one definition for the page's disabled
    button and the server's refusal."""
    if view.get("job_running"):
        return "a calibration is running: wait for it or cancel it"
    if view.get("state") in ("unknown", "stopping"):
        return "no controller is running: the cues reach this page through it (start the myhand-controller service)"
    session = view.get("session")
    if isinstance(session, dict) and not session.get("patient"):
        return "open a session for the patient first"
    if patient is None and not rehearsal:
        return "enter the patient's id, or choose an anonymous rehearsal"
    return None


def _error(text: str, status: int):
    from aiohttp import web

    return web.json_response({"ok": False, "error": text}, status=status)


def _write_token(path: Path, token: str) -> None:
    from metaemg.atomic import PRIVATE, write_text
    from metaemg.trust import private_dir

    private_dir(path.parent, "console token directory")
    write_text(path, token + "\n", perms=PRIVATE)


def _write_url(path: Path, url: str) -> None:
    """The URL for the service's group (0640), in a directory only this user may write."""
    from metaemg.atomic import write_text
    from metaemg.trust import check_dir

    check_dir(path.parent, "console URL directory")  # ours, and nobody else may write in it
    write_text(path, url + "\n", perms=0o640)


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return host == ""


def _tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The TLS context of ``--tls-cert``/``--tls-key`` (None without them); remote needs it."""
    remote = not _is_loopback(args.host)
    if remote and not args.allow_remote:
        raise ConfigError(
            f"--host {args.host}: not a loopback address; the console moves a patient's hand, so serving it to "
            "the network needs --allow-remote, with --tls-cert and --tls-key"
        )
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together (the certificate and its private key)")
    if remote and args.tls_cert is None:
        raise ConfigError(
            f"--allow-remote --host {args.host}: needs --tls-cert FILE and --tls-key FILE: without TLS anyone on the "
            "network path reads the token and can move the hand"
        )
    if _is_wildcard(args.host) and args.public_name is None:
        raise ConfigError(
            f"--host {args.host} listens on every address: give --public-name NAME, the name browsers use to reach "
            "the console (its certificate's name), so that requests naming another host are refused"
        )
    if args.tls_cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(args.tls_cert, args.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"--tls-cert {args.tls_cert} --tls-key {args.tls_key}: cannot load them: {exc}") from None
    return context


@entry_point
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["url"]:
        return print_url(argv[1:])
    args = _parser().parse_args(argv)
    tls = _tls(args)
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: must be 0..65535")
    from calibration.config import load as load_calibration
    from calibration.store import resolve_state_dir
    from controller.__main__ import load_config
    from metaemg.trust import check_socket_dir

    cfg = load_config(args, service_default=True)
    control = cfg.control.resolved_endpoint()
    monitor = cfg.monitor_endpoint()
    check_socket_dir(monitor, "monitor socket directory")  # an untrusted one is refused now, in one line
    calib = load_calibration(Path(args.calibration_config) if args.calibration_config else None)
    state_dir = resolve_state_dir(args.state_dir, calib.state_dir).absolute()
    common = ["--control", control, "--state-dir", str(state_dir)]
    if args.calibration_config:
        common += ["--config", str(Path(args.calibration_config).absolute())]
    token = secrets.token_urlsafe(24)
    token_file = Path(args.token_file) if args.token_file else cfg.control.resolved_runtime_dir() / "console.token"
    _write_token(token_file, token)
    console = Console(control=control, monitor=monitor, token=token, calibrate_args=common, state_dir=state_dir)
    try:
        asyncio.run(_serve(console, args, tls, token_file))
    except KeyboardInterrupt:
        pass
    finally:
        for path in (token_file, Path(args.url_file) if args.url_file else None):
            with contextlib.suppress(FileNotFoundError, TypeError):
                path.unlink()  # type: ignore[union-attr]
    return 0


async def _serve(console: Console, args: argparse.Namespace, tls: ssl.SSLContext | None, token_file: Path) -> None:
    import signal

    from aiohttp import web

    runner = web.AppRunner(console.app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, ssl_context=tls)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"--host {args.host} --port {args.port}: cannot serve there: {exc.strerror or exc}") from None
    bound = runner.addresses[0][1]
    base = console.serving_on(args.host, bound, public_name=args.public_name, tls=tls is not None)
    url = f"{base}/#token={console.token}"
    if args.url_file:
        _write_url(Path(args.url_file), url)
    print(url, flush=True)
    print(
        f"metaemg-console: daemon control {console.control}, monitor {console.monitor}; token in {token_file}; "
        "Ctrl-C to stop",
        file=sys.stderr,
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    sys.exit(main())

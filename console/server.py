"""``metaemg-console``: the clinician's console, a local web app (aiohttp, one page, a WebSocket).

    metaemg-console [--config FILE] [--control ENDPOINT] [--monitor ENDPOINT] [--port 8765]
                    [--host 127.0.0.1 [--allow-remote]] [--state-dir DIR]
                    [--calibration-config FILE] [--token-file FILE]

Prints, as its first line on stdout, the URL to open (with the token). It talks to the daemon only
through the monitor stream (SUB) and the control socket (REQ, :mod:`controller.control`), and runs
``metaemg-calibrate`` for calibrations (:mod:`.jobs`).

Security (README, "The clinician's console"):

- bound to loopback unless ``--host`` names another address *and* ``--allow-remote`` is given;
- every request, the page included, carries the token generated for this run (``?token=`` once:
  the answer sets an HttpOnly, SameSite=Strict cookie and sends the browser to the URL without
  it), or is refused with 401; the token is also in a 0600 file (``--token-file``);
- requests that change something (POST) and the WebSocket must come from the console's own page:
  their ``Origin`` must be the console's own, and a POST must also carry the token in the
  ``X-Console-Token`` header (which another site's page cannot read), else 403;
- the ``Host`` header must name the address the console serves on (no DNS rebinding), else 403.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import ipaddress
import json
import secrets
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
COOKIE = "metaemg_console"
DEFAULT_PORT = 8765
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
    p.add_argument("--allow-remote", action="store_true", help="allow --host to be an address other than loopback")
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
    return p


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
                web.post("/api/control", self.api_control),
                web.post("/api/calibrate", self.api_calibrate),
                web.post("/api/calibrate/cancel", self.api_cancel),
                web.post("/api/install", self.api_install),
                web.post("/api/rollback", self.api_rollback),
                web.static("/static", STATIC, follow_symlinks=False),
            ]
        )
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    def serving_on(self, host: str, port: int) -> None:
        """The address the page is served on: the only Host and Origin accepted."""
        names = {host, "127.0.0.1", "localhost"} if _is_loopback(host) else {host}
        names |= {f"[{n}]" for n in names if ":" in n}
        self.hosts = {f"{n}:{port}" for n in names}
        self.origins = {f"http://{h}" for h in self.hosts}

    # -- security ----------------------------------------------------------------------------------
    def _token_ok(self, supplied: str | None) -> bool:
        return supplied is not None and hmac.compare_digest(supplied.encode(), self.token.encode())

    @property
    def _guard(self):
        from aiohttp import web

        @web.middleware
        async def guard(request, handler):
            if self.hosts and request.headers.get("Host") not in self.hosts:
                return web.Response(status=403, text="forbidden: unexpected Host header\n")
            from_query = request.query.get("token")
            if not (self._token_ok(from_query) or self._token_ok(request.cookies.get(COOKIE))):
                return web.Response(
                    status=401, text="unauthorised: open the URL metaemg-console printed (it carries the token)\n"
                )
            changes = request.method not in ("GET", "HEAD")
            if (changes or request.path == "/ws") and request.headers.get("Origin") not in self.origins:
                return web.Response(status=403, text="forbidden: a request from another page (Origin)\n")
            if changes and not self._token_ok(request.headers.get("X-Console-Token")):
                return web.Response(status=403, text="forbidden: the X-Console-Token header is missing or wrong\n")
            if from_query is not None and request.method == "GET" and request.path == "/":
                response = web.HTTPSeeOther("/")  # the token leaves the address bar and the history
            else:
                response = await handler(request)
            if from_query is not None:
                response.set_cookie(COOKIE, self.token, httponly=True, samesite="Strict", path="/")
            response.headers["Cache-Control"] = "no-store"
            response.headers["X-Frame-Options"] = "DENY"
            response.headers["Referrer-Policy"] = "no-referrer"
            return response

        return guard

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
        sock = self._ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(self.monitor)
        try:
            while True:
                frames = await sock.recv_multipart()
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

        from calibration.protocol import INSTRUCTIONS

        html = (STATIC / "index.html").read_text(encoding="utf-8")
        html = html.replace("{{TOKEN}}", self.token).replace("{{INSTRUCTIONS}}", json.dumps(INSTRUCTIONS))
        return web.Response(text=html, content_type="text/html")

    async def report(self, request):
        from aiohttp import web

        from console.report import session_report

        html = session_report(self.hub, self.jobs, self._models())
        return web.Response(text=html, content_type="text/html")

    async def websocket(self, request):
        from aiohttp import web

        ws = web.WebSocketResponse(heartbeat=10)
        await ws.prepare(request)
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
        return view

    # -- API ---------------------------------------------------------------------------------------
    async def api_view(self, request):
        from aiohttp import web

        return web.json_response(self._view())

    async def api_models(self, request):
        from aiohttp import web

        return web.json_response(self._models())

    def _models(self) -> dict:
        from calibration.store import Store

        store = Store(self.state_dir)
        current, previous = store.describe(store.current), store.describe(store.previous)
        warning = None
        if previous is not None and not previous["calibrated"]:
            warning = (
                f"Rolling back returns to the uncalibrated base model {previous['model_id']}: it decides nothing, "
                "so the hand will not move until the next calibration."
            )
        return {
            "state_dir": str(self.state_dir),
            "current": current,
            "previous": previous,
            "rollback_warning": warning,
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

    async def api_calibrate(self, request):
        from calibration.store import check_patient

        body = await self._body(request)
        try:
            patient = check_patient(str(body.get("patient") or "").strip() or None)
        except ConfigError as exc:
            return _error(str(exc), 400)
        args = [] if patient is None else ["--patient", patient]
        stream = (((self.hub.status or {}).get("input") or {}).get("stream") or {}).get("name")
        if stream:  # the armband the controller listens to, whatever the calibration's lsl.name says
            args += ["--lsl-stream", stream]
        cycles = body.get("cycles")
        if cycles is not None:
            if not isinstance(cycles, int) or isinstance(cycles, bool) or not 2 <= cycles <= 10:
                return _error(f"cycles must be an integer in 2..10, got {cycles!r}", 400)
            args += ["--cycles", str(cycles)]
        return self._start_job("calibrate", args, patient)

    async def api_install(self, request):
        """Install the last refused calibration's model anyway (the clinician confirmed): the same
        clip again with ``--force``."""
        body = await self._body(request)
        job = self.jobs.current
        if body.get("confirm") is not True:
            return _error("installing a model the gate refused needs confirm: true", 400)
        if job is None or job.kind != "calibrate" or job.state != "refused" or not (job.result or {}).get("clip"):
            return _error("nothing to install: the last calibration was not refused by the gate", 409)
        args = ["--from-recording", job.result["clip"], "--force"]  # type: ignore[index]
        if job.patient:
            args += ["--patient", job.patient]
        return self._start_job("install", args, job.patient)

    async def api_rollback(self, request):
        body = await self._body(request)
        if body.get("confirm") is not True:
            return _error("a rollback needs confirm: true", 400)
        models = self._models()
        args = ["--rollback"]
        if models["rollback_warning"]:
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


def _error(text: str, status: int):
    from aiohttp import web

    return web.json_response({"ok": False, "error": text}, status=status)


def _write_token(path: Path, token: str) -> None:
    from metaemg.atomic import PRIVATE, write_text
    from metaemg.trust import private_dir

    private_dir(path.parent, "console token directory")
    write_text(path, token + "\n", perms=PRIVATE)


@entry_point
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not _is_loopback(args.host) and not args.allow_remote:
        raise ConfigError(
            f"--host {args.host}: not a loopback address; the console moves a patient's hand, so serving it to "
            "the network needs --allow-remote (and a network you trust: the token is its only protection)"
        )
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: must be 0..65535")
    from calibration.config import load as load_calibration
    from calibration.store import resolve_state_dir
    from controller.__main__ import load_config

    cfg = load_config(args, service_default=True)
    control = cfg.control.resolved_endpoint()
    monitor = cfg.monitor_endpoint()
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
        asyncio.run(_serve(console, args.host, args.port, token_file))
    except KeyboardInterrupt:
        pass
    finally:
        with contextlib.suppress(FileNotFoundError):
            token_file.unlink()
    return 0


async def _serve(console: Console, host: str, port: int, token_file: Path) -> None:
    import signal

    from aiohttp import web

    runner = web.AppRunner(console.app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"--host {host} --port {port}: cannot serve there: {exc.strerror or exc}") from None
    bound = runner.addresses[0][1]
    console.serving_on(host, bound)
    shown = f"[{host}]" if ":" in host else host
    print(f"http://{shown}:{bound}/?token={console.token}", flush=True)
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

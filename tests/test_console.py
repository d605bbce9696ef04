"""metaemg-console: what the page shows (the hub's rules), who may use it (token, Origin, Host),
and the page itself in a real headless Chromium against the real daemon and simulator."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import re
import stat
import subprocess
import threading
import time

import numpy as np
import pytest

from console.hub import CUE_SHOWN_S, Hub
from controller.monitor import SCHEMA
from firmware_protocol import StopReason
from metaemg.intents import MOVE
from rig.processes import Rig, command, unique_name, wait_until
from tests.console_helpers import BROWSER_POLL_S, ConsoleProcess, browser, text, wait_text


# ------------------------------------------------------------------------------------ the hub
def _msg(topic: str, **fields) -> dict:
    return {"schema": SCHEMA, "topic": topic, "t_mono": 0.0, "t_wall": 1000.0, **fields}


def _status(state: str, reason=None, **extra) -> dict:
    return _msg(
        "status",
        state=state,
        reason=reason,
        paused=state == "paused",
        link={"ready": True, "device_state": "open", "position": 250, "fault": None},
        input={"connected": True, "measured_rate": 200.0},
        model={"model_id": "abc", "input_range": [-128, 127]},
        policy={"threshold": 0.5},
        **extra,
    )


def _decision(intent="open", seq=7) -> dict:
    return _msg("decision", intent=intent, label=intent, probabilities=[0.1, 0.8, 0.1], command_seq=seq, latency_ms=0.9)


def test_a_decision_is_live_only_while_running_and_fresh():
    hub = Hub()
    hub.feed("status", _status("running"), now=10.0)
    hub.feed("decision", _decision(), now=10.0)
    v = hub.view(10.5)
    assert v["explain"]["headline"] == "RUNNING" and v["decision"]["live"] is True and v["threshold"] == 0.5
    assert v["orthosis"]["position"] == 250 and v["model"]["input_range"] == [-128, 127]
    assert hub.view(11.2)["decision"]["live"] is False  # no decision for more than a second

    hub.feed("status", _status("paused"), now=12.0)
    hub.feed("decision", _decision(seq=None), now=12.0)
    v = hub.view(12.1)
    assert v["explain"]["headline"] == "PAUSED" and v["explain"]["action"] == "resume"
    assert v["decision"]["live"] is False and v["decision"]["intent"] == "open"  # shown, greyed

    hub.feed("status", _status("fault", "device fault: overcurrent"), now=13.0)
    v = hub.view(13.0)
    assert v["explain"]["headline"] == "FAULT: device fault: overcurrent" and v["explain"]["action"] == "clear"
    assert v["explain"]["next_step"] == "check the hand, then clear the fault" and not v["decision"]["live"]

    v = hub.view(13.0 + 2.5)  # the daemon fell silent
    assert v["state"] == "unknown" and v["explain"]["headline"] == "NO CONTROLLER" and not v["decision"]["live"]
    assert v["explain"]["meaning"] == "nothing heard from the controller for 2 s"


def test_commands_timeline_cue_and_emg():
    hub = Hub(emg_keep=5)
    hub.feed("status", _status("running"), now=1.0)
    for seq in (1, None, 2):
        hub.feed("decision", _decision("close", seq), now=1.0)
    hub.feed("status", _status("running"), now=1.1)  # no change: no new timeline row
    hub.feed("event", _msg("event", event="state", prev="running", state="paused", reason="operator"), now=1.2)
    hub.feed("status", _status("paused"), now=1.3)
    hub.feed("status", _msg("status", state="running"), now=1.4)
    assert hub.commands == {"close": 2}
    assert [(s["state"], s["reason"]) for s in hub.timeline] == [
        ("running", None),
        ("paused", "operator"),
        ("running", None),
    ]
    assert hub.view(1.4)["events"][-1]["text"] == "now PAUSED"  # in plain words

    hub.feed("emg", _msg("emg", samples=[[1.0] * 8, [2.0] * 8], rate=20.0), now=2.0)
    hub.feed("emg", _msg("emg", samples=[[float(k)] * 8 for k in range(3, 8)], rate=20.0), now=2.0)
    first, samples = hub.emg_since(0)  # 7 arrived, 5 kept
    assert first == 2 and [s[0] for s in samples] == [3.0, 4.0, 5.0, 6.0, 7.0]
    assert hub.emg_since(6) == (6, [[7.0] * 8]) and hub.emg_since(7) == (7, [])

    hub.feed("cue", _msg("cue", cue={"cue": "open", "index": 1, "remaining_s": 2.0}, source="control"), now=3.0)
    assert hub.view(3.5)["cue"]["cue"] == "open" and hub.view(3.0 + CUE_SHOWN_S + 0.1)["cue"] is None
    hub.feed("status", {"schema": "other/1", "state": "fault"}, now=4.0)  # another stream's message
    assert hub.status["state"] == "running"


# ------------------------------------------------------------------------------------ security
@pytest.fixture
def console(tmp_path):
    # no daemon: the console serves and refuses without one
    c = ConsoleProcess(tmp_path, f"ipc://{tmp_path}/run/control.sock", f"ipc://{tmp_path}/monitor.sock")
    yield c
    c.close()


CSP_DIRECTIVES = ("default-src 'self'", "object-src 'none'", "base-uri 'none'", "frame-ancestors 'none'")


def test_every_request_needs_the_token(console):
    assert console.url.startswith("http://127.0.0.1:") and len(console.token) >= 32
    assert console.url == f"{console.base}/#token={console.token}"  # in the fragment: never sent to a server
    assert console.token_file.read_text().strip() == console.token
    assert stat.S_IMODE(os.stat(console.token_file).st_mode) == 0o600
    for path in ("/", "/static/console.js", "/static/console.css"):  # no secret there: served to the right Host
        status, headers, body = console.get(path, token=False)
        assert status == 200 and console.token.encode() not in body, path
        assert "Set-Cookie" not in headers and all(d in headers["Content-Security-Policy"] for d in CSP_DIRECTIVES)
    for path in ("/api/view", "/api/models", "/api/instructions", "/report", "/report?ticket=guess"):
        status, headers, body = console.get(path, token=False)
        assert status == 401 and b"open the URL metaemg-console printed" in body, path
        assert all(d in headers["Content-Security-Policy"] for d in CSP_DIRECTIVES), path
        status, _, _ = console.get(path, token=False, headers={"X-Console-Token": "x" * len(console.token)})
        assert status == 401, path
        status, _, _ = console.get(path, token=False, headers={"Cookie": f"metaemg_console={console.token}"})
        assert status == 401, path  # no ambient credential: a cookie is nothing
    for path in ("/api/view", "/api/models", "/api/instructions"):
        status, headers, body = console.get(path)
        assert status == 200 and "Set-Cookie" not in headers, path
    assert json.loads(console.get("/api/instructions")[2])["open"] == "open your hand and hold it open"

    # the session report opens with a one-time ticket that the page asks for
    own = {"Origin": console.base, "X-Console-Token": console.token}
    status, _, body = console.post("/api/report", {}, own)
    url = json.loads(body)["url"]
    assert status == 200 and url.startswith("/report?ticket=")
    status, _, body = console.get(url, token=False)
    assert status == 200 and b"MyHand session report" in body
    assert console.get(url, token=False)[0] == 401  # used once


def test_changes_only_from_the_consoles_own_page(console):
    own = {"Origin": console.base, "X-Console-Token": console.token}
    cases = [
        ({"X-Console-Token": console.token}, "Origin"),  # no Origin
        ({**own, "Origin": "http://evil.example"}, "Origin"),  # another site's page
        ({**own, "Origin": "null"}, "Origin"),
        ({**own, "Origin": console.base.rsplit(":", 1)[0] + ":1"}, "Origin"),  # another port of this host
        ({"Origin": console.base}, "X-Console-Token"),  # a form cannot set the header
        ({**own, "X-Console-Token": "wrong"}, "X-Console-Token"),
        ({**own, "Host": "rebound.example:8765"}, "Host"),  # DNS rebinding
    ]
    for headers, what in cases:
        status, _, body = console.post("/api/control", {"cmd": "pause"}, headers)
        assert status in (401, 403) and (what.encode() in body or b"unauthorised" in body), (headers, body)
        assert (status == 401) == (what == "X-Console-Token"), (headers, status)
    status, _, body = console.post("/api/control", {"cmd": "reload"}, own)
    assert status == 400 and b"cmd must be one of pause, resume, clear, stop" in body
    status, _, body = console.post("/api/control", {"cmd": "pause"}, own)  # through the guard; no daemon
    assert status == 502 and json.loads(body)["ok"] is False
    status, _, body = console.post("/api/calibrate", {"patient": "Jane Doe"}, own)
    assert status == 400 and b"a patient id is 1-32 letters" in body
    status, _, body = console.post("/api/rollback", {}, own)
    assert status == 400 and b"confirm" in body
    status, _, body = console.post("/api/install", {"confirm": True, "clip_sha256": "0" * 64}, own)
    assert status == 409 and b"nothing to install" in body
    status, _, body = console.post("/api/operating-point", {"point": "fast", "clip_sha256": "0" * 64}, own)
    assert status == 400 and b"point must be one of steady, balanced, responsive" in body
    status, _, body = console.post("/api/operating-point", {"point": "steady", "clip_sha256": "0" * 64}, own)
    assert status == 409 and b"no calibration of that clip in this session" in body


def _console_refuses(tmp_path, *args: str) -> str:
    proc = subprocess.run(
        [*command("metaemg-console", "console.server"), *args, "--token-file", str(tmp_path / "t")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and proc.stdout == "", proc
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()], proc.stderr
    assert not (tmp_path / "t").exists()
    return proc.stderr


def _certificate(tmp_path) -> tuple[str, str]:
    """A self-signed certificate for ``localhost`` (openssl), as a clinic's own CA would issue one."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    new = ["-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"]
    name = ["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"]
    subprocess.run(
        ["openssl", "req", *new, *name, "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return str(cert), str(key)


def test_serving_beyond_loopback_needs_tls_and_a_public_name(tmp_path):
    assert "needs --allow-remote" in _console_refuses(tmp_path, "--host", "0.0.0.0")
    err = _console_refuses(tmp_path, "--host", "0.0.0.0", "--allow-remote")
    assert "needs --tls-cert FILE and --tls-key FILE" in err and "reads the token" in err
    cert, key = _certificate(tmp_path)
    tls = ["--tls-cert", cert, "--tls-key", key]
    assert "give --public-name NAME" in _console_refuses(tmp_path, "--host", "0.0.0.0", "--allow-remote", *tls)
    assert "go together" in _console_refuses(tmp_path, "--tls-cert", cert)


def test_remote_mode_serves_https_only(tmp_path):
    import ssl
    import urllib.error
    import urllib.request

    cert, key = _certificate(tmp_path)
    remote = ["--host", "0.0.0.0", "--allow-remote", "--public-name", "localhost", "--tls-cert", cert, "--tls-key", key]
    c = ConsoleProcess(tmp_path, f"ipc://{tmp_path}/run/control.sock", f"ipc://{tmp_path}/monitor.sock", *remote)
    try:
        assert c.base.startswith("https://localhost:") and c.url == f"{c.base}/#token={c.token}"
        context = ssl.create_default_context(cafile=cert)  # the browser trusts the clinic's certificate
        req = urllib.request.Request(c.base + "/api/view", headers={"X-Console-Token": c.token})
        with urllib.request.urlopen(req, context=context, timeout=10) as r:
            assert r.status == 200 and json.loads(r.read())["state"] == "unknown"
        req = urllib.request.Request(c.base + "/api/view", headers={"X-Console-Token": "x" * len(c.token)})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, context=context, timeout=10)
        refused.value.close()
        assert refused.value.code == 401
        port = c.base.rsplit(":", 1)[1]
        req = urllib.request.Request(
            f"https://127.0.0.1:{port}/api/view",
            headers={"X-Console-Token": c.token, "Host": f"127.0.0.1:{port}"},
        )
        insecure = ssl._create_unverified_context()  # past the certificate: the Host check still says no
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, context=insecure, timeout=10)
        refused.value.close()
        assert refused.value.code == 403
        import http.client

        # plain HTTP gets no answer: the connection closes, or what comes back is a TLS alert, no HTTP
        with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10)
    finally:
        c.close()


# ------------------------------------------------------------------------------------ the page
_ATTACK = """<!doctype html><title>loading</title><script>
fetch("CONSOLE/api/control", {method: "POST", mode: "no-cors", credentials: "include",
  headers: {"Content-Type": "text/plain"}, body: '{"cmd": "pause"}'})
  .then(() => { document.title = "sent"; }, () => { document.title = "blocked"; });
</script>"""


@contextlib.contextmanager
def _page_elsewhere(html: str, seen: list | None = None):
    """Serve ``html`` from another origin (a port of its own); yields its URL. ``seen`` gets the
    headers of every request it receives."""
    body = html.encode()

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if seen is not None:
                seen.append(dict(self.headers))
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


_READ = """<!doctype html><title>loading</title><script>
fetch("CONSOLE/api/view", {credentials: "include"}).then((r) => r.text())
  .then((t) => { document.title = "read " + t.slice(0, 40); }, () => { document.title = "blocked"; });
</script>"""
_MARKUP = "<img src=x onerror=document.title=location.host>"


def test_the_page_keeps_its_token_to_itself_and_shows_the_senders_words_as_text(tmp_path):
    """No daemon at first: the token leaves the address bar for this tab's storage and is in no
    element; a WebSocket without it is closed; the calibration is disabled and says why. Then a
    daemon that sees two armbands with one name, one whose source id carries markup and a forged
    JSON line: the daemon waits and the calibration fails naming both, and the page shows the
    words as text; a page on another port gets no credential and reads nothing."""
    from selenium.webdriver.common.by import By

    from metaemg.modelfile import default_model_path
    from rig.processes import Daemon, Sim
    from rig.replay import Replay

    name = unique_name("console-markup")
    cfg = tmp_path / "calibration.yaml"
    cfg.write_text(f"lsl: {{name: {name}, resolve_timeout_s: 5}}\npng: false\n")
    quiet = np.zeros((20, 8), dtype=np.float32)
    forged = '\n{"ok": true, "accuracy_after": 1.0, "confusion_after": [["' + _MARKUP + '"]]}'
    armbands = [
        Replay(quiet, None, 200.0, name=name, source_id=sid, loop=True).start()
        for sid in ("plain", "evil" + _MARKUP + forged)
    ]
    url_dir = tmp_path / "console-run"
    url_dir.mkdir(mode=0o750)  # as the installed service's RuntimeDirectory: its group reads the URL
    c = ConsoleProcess(
        tmp_path,
        f"ipc://{tmp_path}/run/control.sock",
        f"ipc://{tmp_path}/monitor.sock",
        "--calibration-config",
        str(cfg),
        "--url-file",
        str(url_dir / "url"),
    )
    assert (url_dir / "url").read_text() == c.url + "\n" and oct((url_dir / "url").stat().st_mode & 0o777) == "0o640"
    driver = browser(tmp_path)
    daemons: list = []
    sims: list = []
    try:
        driver.get(c.url)
        wait_text(driver, "state-headline", lambda t: t == "NO CONTROLLER", 10, "the page, without a daemon")
        assert driver.current_url == c.base + "/"  # the token left the address bar and the history
        assert driver.execute_script("return sessionStorage.getItem('metaemg-console-token')") == c.token
        assert c.token not in driver.execute_script("return document.documentElement.outerHTML")

        closed = """const done = arguments[arguments.length - 1];
            const ws = new WebSocket(`ws://${location.host}/ws`);
            ws.onopen = () => { if (arguments[0] !== null) ws.send(arguments[0]); };
            ws.onclose = (e) => done(e.code);"""
        t = time.monotonic()
        assert driver.execute_async_script(closed, None) == 4401  # nothing sent: closed after a second
        assert time.monotonic() - t < 5
        assert driver.execute_async_script(closed, json.dumps({"token": "x" * len(c.token)})) == 4401

        driver.find_element(By.ID, "patient").send_keys("P001")
        why = wait_text(driver, "calibrate-why", lambda t: t != "", 5, "why the calibration is off")
        assert (
            why == "Calibration: no controller is running: the cues reach this page through it (start the "
            "myhand-controller service)."
        )
        assert not driver.find_element(By.ID, "btn-calibrate").is_enabled()
        own = {"Origin": c.base, "X-Console-Token": c.token}
        status_code, _, body = c.post("/api/calibrate", {"patient": "P001"}, own)  # the server says the same
        assert status_code == 409 and b"no controller is running" in body

        sim = Sim(tmp_path)
        daemons.append(Daemon(tmp_path, stream=name, port=str(sim.link), model=default_model_path()))
        sims.append(sim)
        wait_text(driver, "state-headline", lambda t: t.startswith("WAITING FOR THE ARMBAND"), 20, "the daemon")
        headline = text(driver, "state-headline")
        assert "source id 'plain'" in headline and _MARKUP in headline  # the daemon's words, as text
        wait_until(
            lambda: driver.find_element(By.ID, "btn-calibrate").is_enabled(), 5, "the calibration on", BROWSER_POLL_S
        )
        driver.find_element(By.ID, "btn-calibrate").click()
        status = wait_text(driver, "cal-status", lambda s: "failed" in s, 60, "the failed calibration")
        assert status.startswith("Calibration for P001: failed: 2 armbands match") and "source id 'plain'" in status
        assert _MARKUP in status and "\\n{" in status  # the source id as text, its newline quoted
        assert driver.title == "MyHand console" and not driver.find_elements(By.CSS_SELECTOR, "img")
        assert not driver.find_elements(By.ID, "cal-confusion")  # the forged line is no result
        assert c.view()["job"]["result"]["ok"] is False

        seen: list[dict] = []
        with _page_elsewhere(_READ.replace("CONSOLE", c.base), seen) as elsewhere:
            driver.get(elsewhere)
            wait_until(lambda: driver.title != "loading", 10, "the other page's request", BROWSER_POLL_S)
            assert driver.title == "blocked"
        assert seen and not [h for h in seen if "Cookie" in h or c.token in json.dumps(h)]

        driver.switch_to.new_window("tab")  # a tab of its own has no token: it says how to get one
        driver.get(c.base + "/")
        wait_text(driver, "state-headline", lambda t: t == "NOT SIGNED IN", 5, "the page without its token")
    finally:
        driver.quit()
        c.close()
        for process in (*daemons, *sims):
            process.stop()
        for a in armbands:
            a.close()


def test_a_result_comes_only_from_the_childs_result_file(tmp_path):
    """A calibration child that prints JSON lines on stdout and stderr (as a stream name or host
    name with a newline once made it): the result is what it wrote to its result file, and its
    lines are only lines."""
    import asyncio
    import sys

    from console.jobs import Jobs

    forged = json.dumps({"ok": True, "installed": True, "accuracy_after": 1.0, "gate": {"passed": True}})
    child = tmp_path / "child.py"
    child.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        "path = sys.argv[sys.argv.index('--result-file') + 1]\n"
        f"print({forged!r}, flush=True)\nprint({forged!r}, file=sys.stderr, flush=True)\n"
        "open(path, 'w').write(json.dumps({'ok': False, 'accuracy_after': 0.5, 'gate': {'passed': False}}))\n"
        f"print({forged!r}, flush=True)\nsys.exit(3)\n"
    )
    child.chmod(0o700)

    async def run():
        jobs = Jobs(["--state-dir", str(tmp_path)], python=str(child))
        job = jobs.start("calibrate", [], "P001")
        await jobs._task
        await jobs.close()
        return job

    job = asyncio.run(run())
    assert job.result == {"ok": False, "accuracy_after": 0.5, "gate": {"passed": False}}
    assert job.state == "refused" and list(job.lines) == [forged] * 3


@pytest.fixture(scope="module")
def model(myo_src, tmp_path_factory):
    from rig.models import male13_model

    return male13_model(tmp_path_factory.mktemp("console_models"), myo_src)


@pytest.fixture
def rig(tmp_path, model, myo_src):
    from rig.models import myo_recording

    r = Rig(tmp_path, model, myo_recording(myo_src, "Male13", "Test0").emg)
    yield r
    r.close()


def test_the_page_follows_the_daemon_and_pauses_the_hand(rig, tmp_path):
    from selenium.webdriver.common.by import By

    console = ConsoleProcess(tmp_path, rig.daemon.control, rig.daemon.monitor)
    driver = browser(tmp_path)
    try:
        driver.get(console.url)
        assert driver.current_url == console.base + "/"  # the token left the address bar
        wait_text(driver, "state-headline", lambda t: t == "RUNNING", 10, "the running state")
        wait_text(
            driver,
            "decision-note",
            lambda t: t in ("sent to the hand", "below the threshold: holds relax"),
            5,
            "a live decision",
        )
        assert driver.find_element(By.ID, "decision").get_attribute("class") == "live"

        # another page in the same browser (same site: another port of 127.0.0.1) posts to the
        # console: it has no credential to send, and is refused; the hand keeps going
        t = time.monotonic()
        with _page_elsewhere(_ATTACK.replace("CONSOLE", console.base)) as elsewhere:
            driver.get(elsewhere)
            wait_until(lambda: driver.title in ("sent", "blocked"), 10, "the other page's request", BROWSER_POLL_S)
        driver.get(console.base + "/")
        wait_text(driver, "state-headline", lambda t: t == "RUNNING", 10, "still running")
        assert rig.status()["state"] == "running" and not [
            e for e in rig.sim.log.events("stop") if e["t"] > t and e["reason"] == StopReason.OPERATOR
        ]

        t = time.monotonic()
        driver.find_element(By.ID, "btn-pause").click()  # no confirmation: pausing never moves the hand
        rig.wait_stop_after(t, 3, StopReason.OPERATOR)
        wait_text(driver, "state-headline", lambda s: s == "PAUSED", 3, "the paused state")
        wait_text(driver, "decision-note", lambda s: s.startswith("not sent: PAUSED"), 3, "a greyed decision")
        assert driver.find_element(By.ID, "decision").get_attribute("class") == "stale"
        assert text(driver, "state-next") == "Next: resume when the patient is ready."

        driver.find_element(By.ID, "btn-resume").click()  # moves the hand: asks first
        assert "The hand may move" in text(driver, "confirm-text")
        driver.find_element(By.ID, "confirm-no").click()
        assert rig.status()["state"] == "paused"
        driver.find_element(By.ID, "btn-resume").click()
        driver.find_element(By.ID, "confirm-yes").click()
        wait_text(driver, "state-headline", lambda s: s == "RUNNING", 3, "running again")

        t = time.monotonic()
        rig.sim.send(cmd="fault", code="overcurrent")
        rig.state_event("fault", t, 3)
        wait_text(driver, "state-headline", lambda s: s == "FAULT: device fault: overcurrent", 2, "the fault")
        assert text(driver, "state-next") == "Next: check the hand, then clear the fault."
        assert text(driver, "state-action") == "Clear"
        wait_text(driver, "decision-note", lambda s: s.startswith("not sent: FAULT"), 2, "a greyed decision")
    finally:
        driver.quit()
        console.close()


def test_the_page_says_when_to_recalibrate_and_starts_it(tmp_path, model, myo_src):
    """The real daemon on an armband that slips by half an electrode six seconds in: the banner
    says recalibration is suggested and why, and its one button starts a calibration."""
    from selenium.webdriver.common.by import By

    from bench.drift import rotate
    from rig.models import myo_recording

    emg = myo_recording(myo_src, "Male13", "Test0").emg.astype(np.float64)
    emg[1200:] = np.clip(np.round(rotate(emg[1200:], 0.5)), -128, 127)
    cfg = tmp_path / "controller.yaml"
    cfg.write_text("adapt:\n  turn_rate: 0.1\n  turn_hold_s: 0.5\n")  # a quick flag: this test is about the page
    rig = Rig(tmp_path, model, emg, daemon_args=("--config", str(cfg)))
    console = ConsoleProcess(tmp_path, rig.daemon.control, rig.daemon.monitor)
    driver = browser(tmp_path)
    try:
        driver.get(console.url)
        wait_text(driver, "state-headline", lambda t: t == "RUNNING: RECALIBRATION SUGGESTED", 40, "the flag")
        meaning = text(driver, "state-meaning")
        assert "as if it had turned by about 0.5 of an electrode" in meaning and "calibrate again" in meaning
        assert text(driver, "state-next").startswith("Next: calibrate again")
        assert rig.status()["recalibration"][1:] in meaning  # the daemon's words, capitalised
        wait_text(driver, "state-action", lambda t: t == "Calibrate now", 5, "the button")
        driver.find_element(By.ID, "patient").send_keys("P007")  # a calibration is for a patient
        driver.find_element(By.ID, "state-action").click()
        wait_text(driver, "cal-status", lambda t: "recording" in t, 10, "a calibration")
        own = {"Origin": console.base, "X-Console-Token": console.token}
        assert json.loads(console.post("/api/calibrate/cancel", {}, own)[2])["ok"] is True
        wait_text(driver, "cal-status", lambda t: "cancelled" in t, 20, "the calibration cancelled")
    finally:
        driver.quit()
        console.close()
        rig.close()


def test_a_patient_session_rehearsed_from_the_page(tmp_path, myo_src):
    """The installed service's way (sessions per patient), with no armband and no orthosis: the
    real daemon, the simulated patient following the page's cues, the orthosis simulator.

    Held until a session opens; a patient without a model cannot move the hand. A calibration in
    the session: the cues in full screen, the clip recorded from the daemon's armband only, the
    result with its operating points, the model panel (whose model, when, how good). Installed,
    the hand waits for the clinician; kept, the patient's movements drive it. A rollback is warned
    and confirmed; another operating point calibrates again from the same clip. Ending the session
    holds the hand; reopening it brings the patient's model back. (One test: each whole
    calibration through the page takes about 15 s of real time.)"""
    import shutil

    from selenium.webdriver.common.by import By

    from metaemg.modelfile import default_model_path, read_model_info
    from metalearn.recording import read_recording
    from rig.models import myo_recording
    from rig.replay import Replay

    base = tmp_path / "base.onnx"
    shutil.copy(default_model_path(), base)
    base_id = read_model_info(base).model_id
    rec = myo_recording(myo_src, "Male13", "training0", move_s=8.0)  # and the subject's wrist movements
    (tmp_path / "state").mkdir(mode=0o700)
    daemon_cfg = tmp_path / "controller.yaml"
    daemon_cfg.write_text(f"session:\n  state_dir: {tmp_path / 'state'}\n")
    cal_cfg = tmp_path / "calibration.yaml"
    protocol = "protocol: {countdown_s: 1, cycles: 1, relax_s: 1.5, open_s: 1.5, close_s: 1.5, move_s: 4}"  # short
    cal_cfg.write_text(f"base_model: {base}\npng: false\n{protocol}\ncues:\n  endpoint: null\n")  # via the daemon
    rig = Rig(tmp_path, base, rec.emg, patient=rec, daemon_args=("--config", str(daemon_cfg)), wait_running=0)
    # a second armband with the same name, after the daemon bound to the patient's: the calibration
    # records the daemon's (LSL alone hands over either one)
    other = np.full((20, 8), 77.0, dtype=np.float32)
    second = None
    console = ConsoleProcess(tmp_path, rig.daemon.control, rig.daemon.monitor, "--calibration-config", str(cal_cfg))
    driver = browser(tmp_path)
    try:
        driver.get(console.url)
        wait_text(driver, "state-headline", lambda t: t == "NO PATIENT SESSION", 20, "held without a session")
        assert text(driver, "calibrate-why") == "Calibration: open a session for the patient first."
        assert not driver.find_element(By.ID, "btn-calibrate").is_enabled()
        assert not driver.find_element(By.ID, "rehearsal-box").is_displayed()  # no anonymous calibration here
        wait_until(lambda: rig.status()["input"]["bound_to"], 10, "the daemon bound to the patient's armband")
        second = Replay(other, None, 200.0, name=rig.name, source_id="the-other-armband", loop=True).start()

        driver.find_element(By.ID, "patient").send_keys("P007")
        driver.find_element(By.ID, "btn-session").click()
        wait_text(driver, "state-headline", lambda t: t == "SESSION P007: KEEP THE MODEL OR CALIBRATE", 10, "open")
        assert "P007 has no calibrated model yet: the hand will not move" in text(driver, "state-meaning")
        assert text(driver, "state-action") == "Keep this model"

        # the calibration, in full screen, while the hand holds still
        wait_until(
            lambda: driver.find_element(By.ID, "btn-calibrate").is_enabled(), 5, "the calibration on", BROWSER_POLL_S
        )
        driver.find_element(By.ID, "btn-calibrate").click()
        words, steps = set(), set()

        def cue_shown():
            overlay = driver.find_element(By.ID, "cue-overlay")
            if overlay.is_displayed():
                words.add(text(driver, "cue-word"))
                steps.add(text(driver, "cue-step"))
            return "OPEN" in words

        try:
            wait_until(cue_shown, 15, "the OPEN cue on the page", BROWSER_POLL_S)
        except AssertionError:
            raise AssertionError(f"cues seen {words}; {text(driver, 'cal-status')}; {console.view()['job']}") from None
        assert rig.status()["state"] == "paused"  # the hand holds still while the patient follows the cues
        assert text(driver, "cue-instruction") == "open your hand and hold it open"

        def result_or_cue():
            with contextlib.suppress(Exception):  # the overlay may go between two calls
                cue_shown()
            status = text(driver, "cal-status")
            return status if ("installed" in status or "refused" in status or "failed" in status) else None

        status = wait_until(result_or_cue, 60, "the result", BROWSER_POLL_S)
        # the movement segment came last, in the same full-screen style, with its step counter
        assert {"RELAX", "OPEN", "CLOSE", "MOVE"} <= words and "step 6 of 6" in steps, (words, steps)
        assert status == "Calibration for P007: passed the gate and installed", status
        assert not driver.find_element(By.ID, "cue-overlay").is_displayed()
        assert text(driver, "gate-line").startswith("Gate: passed")
        after = float(text(driver, "acc-after").rstrip(" %"))
        print(f"rehearsal calibration: accuracy after {after} %")
        assert after >= 80 and len(driver.find_elements(By.CSS_SELECTOR, "#cal-confusion tr")) == 4
        # the clip's own figures at each operating point, the one in use marked, the others offered
        # (read in one script: the page redraws the result with every update)
        points = driver.execute_script(
            "return Array.from(document.querySelectorAll('#op-table tr')).map(r => r.textContent)"
            " .concat([document.getElementById('use-steady') ? 'offered' : 'not offered'])"
        )
        assert [r.split(":")[0] for r in points[1:4]] == ["steady", "balanced", "responsive"], points
        assert "in use" in points[2] and points[4] == "offered", points
        assert text(driver, "move-after").endswith("%")
        installed = text(driver, "install-line").split("model ")[1].rstrip(".")
        clip_file = next((tmp_path / "state" / "clips").glob("*_P007_*.csv"))
        clip = read_recording(clip_file)
        assert (clip.labels == MOVE).sum() > 3 * 200  # the segment, recorded live, labelled move
        assert len(clip.emg) > 500 and not (clip.emg == 77.0).all(axis=1).any()  # not one row of the other armband
        model_file = next((tmp_path / "state" / "models").glob("adapted_*_P007_*.onnx"))
        assert read_model_info(model_file).model_id == installed
        # the model panel: whose, when, how good, never only a hash
        models = wait_text(driver, "models", lambda t: installed in t, 5, "the models after the calibration")
        assert re.fullmatch(
            rf"Last installed: P007's model calibrated \d\d:\d\d, accuracy \d+ % \({installed}\)\. "
            rf"Roll back to: the uncalibrated base model \({base_id}\): it moves nothing\.",
            models,
        ), models

        # installed, but the hand waits for the clinician: whose model, when, how good
        wait_text(driver, "state-meaning", lambda t: "P007's model calibrated" in t, 10, "the new model")
        meaning = text(driver, "state-meaning")
        assert re.search(r"P007's model calibrated \d\d:\d\d, accuracy \d+% at calibration, balanced", meaning), meaning
        driver.find_element(By.ID, "state-action").click()  # Keep this model
        driver.find_element(By.ID, "confirm-yes").click()
        wait_text(driver, "state-headline", lambda t: t == "RUNNING", 10, "running on P007's model")
        assert text(driver, "state-meaning") == "The hand follows the decisions (patient P007)."
        line = wait_text(driver, "session-line", lambda t: t.endswith("; in use."), 5, "the session in use")
        assert line.startswith("Session: P007, opened ") and "P007's model calibrated" in line
        assert re.fullmatch(
            rf"running P007's model calibrated \d\d:\d\d, accuracy \d+ % \({installed}\)", text(driver, "model")
        )
        assert rig.status()["model"]["model_id"] == installed
        # use: the patient's movements drive the hand
        t = time.monotonic()
        wait_until(
            lambda: {c.get("intent") for c in rig.commands(t)} & {"open", "close"}, 20, "an open or close command"
        )

        # rollback: the previous model is the uncalibrated base model; the page says so first
        driver.find_element(By.ID, "btn-rollback").click()
        warning = wait_text(driver, "confirm-text", lambda s: s.startswith("WARNING"), 5, "the rollback warning")
        assert f"uncalibrated base model {base_id}" in warning and "the hand will not move" in warning
        driver.find_element(By.ID, "confirm-yes").click()
        wait_text(driver, "cal-status", lambda s: s == "Rollback: done", 30, "the rollback")
        wait_until(lambda: rig.status()["model"]["model_id"] == base_id, 5, "the base model running again")
        models = wait_text(driver, "models", lambda t: t.startswith("Last installed: the uncalibrated"), 5, "rollback")
        assert "Roll back to: P007's model calibrated" in models and f"({installed})" in models
        wait_text(
            driver, "model", lambda t: t == f"running the uncalibrated base model ({base_id}): it moves nothing", 5, "m"
        )

        # another operating point for the same clip: calibrated again from it, through the gate
        own = {"Origin": console.base, "X-Console-Token": console.token}
        digest = hashlib.sha256(clip_file.read_bytes()).hexdigest()
        status, _, body = console.post("/api/operating-point", {"point": "steady", "clip_sha256": digest}, own)
        assert status == 200, body
        wait_text(driver, "cal-status", lambda s: s.endswith("passed the gate and installed"), 60, "steady")
        in_use = driver.execute_script(
            "return Array.from(document.querySelectorAll('#op-table tr')).filter(r => r.textContent.includes('in use'))"
            ".map(r => r.textContent.split(':')[0])"
        )
        assert in_use == ["steady"]
        wait_until(lambda: rig.status()["model"]["model_id"] not in (base_id, installed), 5, "the steady model")
        steady = rig.status()["model"]["model_id"]

        status, _, body = console.get("/report")
        report = body.decode()
        assert status == 200 and "Patient: <b>P007</b>" in report and f"Installed: model {installed}" in report
        assert "uncalibrated base model" in report

        # ending the session holds the hand; reopening it brings the patient's model back
        driver.find_element(By.ID, "btn-end-session").click()
        driver.find_element(By.ID, "confirm-yes").click()
        wait_text(driver, "state-headline", lambda t: t == "NO PATIENT SESSION", 10, "ended")
        assert rig.status()["model"]["model_id"] != steady  # the base model: nobody's
        driver.find_element(By.ID, "patient").clear()
        driver.find_element(By.ID, "patient").send_keys("P007")
        driver.find_element(By.ID, "btn-session").click()
        wait_text(driver, "state-meaning", lambda t: "P007's model calibrated" in t, 10, "P007's model again")
        assert rig.status()["model"]["model_id"] == steady
    finally:
        driver.quit()
        console.close()
        if second is not None:
            second.close()
        rig.close()

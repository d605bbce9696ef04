"""Helpers for the console tests: the real ``metaemg-console`` process over HTTP, and a real headless
Chromium (:mod:`rig.browser`). Polls with deadlines, never sleeps as synchronisation."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

from rig.browser import chromium, console
from rig.processes import end_process, wait_until


class ConsoleProcess:
    """``metaemg-console --port 0`` for a daemon's sockets (:func:`rig.browser.console`); ``url``
    is its first stdout line (``BASE/#token=TOKEN``)."""

    def __init__(self, tmp: Path, control: str, monitor: str, *extra: str) -> None:
        self.token_file = tmp / "console.token"
        self.proc, self.url = console(tmp, control, monitor, *extra)
        self.base, _, fragment = self.url.partition("/#")
        self.token = fragment.removeprefix("token=")

    def get(self, path: str, *, token: bool = True, headers: dict | None = None) -> tuple[int, dict, bytes]:
        """GET ``path`` with the token in its header (as the page sends it), or without."""
        sent = {"X-Console-Token": self.token} if token else {}
        return _call(urllib.request.Request(self.base + path, headers={**sent, **(headers or {})}))

    def post(self, path: str, body: dict, headers: dict) -> tuple[int, dict, bytes]:
        req = urllib.request.Request(
            self.base + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **headers},
            method="POST",
        )
        return _call(req)

    def view(self) -> dict:
        status, _, body = self.get("/api/view")
        assert status == 200, body
        return json.loads(body)

    def close(self) -> None:
        end_process(self.proc)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def _call(req: urllib.request.Request) -> tuple[int, dict, bytes]:
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


# how often a test reads the page: each read is a WebDriver round trip that makes Chromium run a
# script; every 20 ms that doubled the browser's CPU (a third of a core), every 0.1 s it is a few %
BROWSER_POLL_S = 0.1


def browser(tmp: Path):
    return chromium(tmp / "chromium")


def text(driver, element_id: str) -> str:
    """The rendered text of element ``element_id``, read in one step in the page: the console
    re-renders parts of the page on every update, so an element found first and read after may
    already be replaced (StaleElementReferenceException)."""
    value = driver.execute_script(
        "const e = document.getElementById(arguments[0]); return e === null ? null : e.innerText;", element_id
    )
    assert value is not None, f"no element #{element_id} on the page"
    return value.strip()


def wait_text(driver, element_id: str, predicate, timeout: float, what: str) -> str:
    """Poll an element's text until ``predicate(text)``; its last text in the error."""
    seen = [""]

    def shown():
        seen[0] = text(driver, element_id)
        return predicate(seen[0])

    try:
        wait_until(shown, timeout, what, poll=BROWSER_POLL_S)
    except AssertionError:
        raise AssertionError(f"{what}: #{element_id} still shows {seen[0]!r} after {timeout} s") from None
    return seen[0]

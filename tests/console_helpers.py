"""Helpers for the console tests: the real ``metaemg-console`` process and a real headless Chromium
(Debian's ``chromium`` and ``chromium-driver``, driven by Selenium; ``scripts/setup.sh`` installs
them). Polls with deadlines, never sleeps as synchronisation."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from rig.processes import command, end_process, spawn, wait_until

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


class ConsoleProcess:
    """``metaemg-console --port 0`` for a daemon's sockets; ``url`` is its first stdout line."""

    def __init__(self, tmp: Path, control: str, monitor: str, *extra: str) -> None:
        self.token_file = tmp / "console.token"
        self.argv = [
            *command("metaemg-console", "console.server"),
            "--control",
            control,
            "--monitor",
            monitor,
            "--port",
            "0",
            "--state-dir",
            str(tmp / "state"),
            "--token-file",
            str(self.token_file),
            *extra,
        ]
        self.log = tmp / "console.log"
        self.proc = spawn(self.argv, self.log, pipe_stdout=True)
        assert self.proc.stdout is not None  # pipe_stdout
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http://"):
            end_process(self.proc)
            raise RuntimeError(f"metaemg-console printed {self.url!r} first; its log: {self.log.read_text()}")
        self.base = self.url.split("/?")[0]
        self.token = self.url.split("token=", 1)[1]

    def get(self, path: str, *, token: bool = True, headers: dict | None = None) -> tuple[int, dict, bytes]:
        sep = "&" if "?" in path else "?"
        url = self.base + path + (f"{sep}token={self.token}" if token else "")
        return _call(urllib.request.Request(url, headers=headers or {}))

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


def browser(tmp: Path, width: int = 1400, height: int = 900):
    """A real headless Chromium (Selenium's Chrome driver on Debian's chromedriver)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for exe in (CHROMIUM, CHROMEDRIVER):
        if not Path(exe).exists() and not shutil.which(Path(exe).name):
            raise RuntimeError(f"{exe} is missing: run scripts/setup.sh (it installs chromium and chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp / 'chromium'}",
        f"--window-size={width},{height}",
    ):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER, log_output=subprocess.DEVNULL), options=opts)


def wait_text(driver, element_id: str, predicate, timeout: float, what: str) -> str:
    """Poll an element's text until ``predicate(text)``; its last text in the error."""
    from selenium.webdriver.common.by import By

    seen = [""]

    def shown():
        seen[0] = driver.find_element(By.ID, element_id).text
        return predicate(seen[0])

    try:
        wait_until(shown, timeout, what, poll=0.02)
    except AssertionError:
        raise AssertionError(f"{what}: #{element_id} still shows {seen[0]!r} after {timeout} s") from None
    return seen[0]

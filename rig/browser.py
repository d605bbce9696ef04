"""A real headless browser for the console: Debian's Chromium driven by Selenium through Debian's
ChromeDriver (``scripts/setup.sh`` installs both; the ``dev`` extra has Selenium), for the tests
and for the documentation's screenshots (docs/img).

    python -m rig.browser docs/img     # console_live.png, console_cue.png, console_result.png

The screenshots are of a rehearsal: the orthosis simulator, the simulated patient (Male13,
``training0``) and the daemon running the packaged default model calibrated on Male13; the
console's calibration then adapts the default model live while the patient follows its cues.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from metaemg.errors import MetaEMGError
from rig.processes import command, end_process, spawn, wait_until

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


class BrowserMissing(MetaEMGError):
    """Chromium or its driver is not installed."""


def chromium(profile: Path, width: int = 1400, height: int = 900):
    """A headless Chromium with a fresh profile in ``profile``, no background network traffic."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for exe in (CHROMIUM, CHROMEDRIVER):
        if not Path(exe).is_file():
            raise BrowserMissing(f"{exe} is missing: run scripts/setup.sh (it installs chromium and chromium-driver)")
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
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
    ):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER, log_output=subprocess.DEVNULL), options=opts)


def console(tmp: Path, control: str, monitor: str, *extra: str) -> tuple[subprocess.Popen, str]:
    """``metaemg-console --port 0`` for a daemon's sockets: the process and the URL it printed."""
    argv = [*command("metaemg-console", "console.server"), "--control", control, "--monitor", monitor]
    argv += ["--port", "0", "--state-dir", str(tmp / "state"), "--token-file", str(tmp / "console.token"), *extra]
    proc = spawn(argv, tmp / "console.log", pipe_stdout=True)
    assert proc.stdout is not None  # pipe_stdout
    url = proc.stdout.readline().strip()
    if not url.startswith(("http://", "https://")) or "/#token=" not in url:
        end_process(proc)
        raise MetaEMGError(f"metaemg-console printed {url!r} first; its log: {(tmp / 'console.log').read_text()}")
    return proc, url


def screenshots(out: Path) -> list[Path]:
    from selenium.webdriver.common.by import By

    from metaemg.modelfile import default_model_path
    from metalearn.myo import default_myo_root
    from rig.models import male13_model, myo_recording
    from rig.processes import Rig

    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="metaemg-shots-"))
    root = default_myo_root()
    rec = myo_recording(root, "Male13", "training0")
    cfg = tmp / "calibration.yaml"
    cfg.write_text(f"base_model: {default_model_path()}\npng: false\ncues:\n  endpoint: null\n", encoding="utf-8")
    rig = Rig(tmp, male13_model(tmp, root), rec.emg, patient=rec)
    proc, url = console(tmp, rig.daemon.control, rig.daemon.monitor, "--calibration-config", str(cfg))
    driver = chromium(tmp / "chromium")
    shots = [out / "console_live.png", out / "console_cue.png", out / "console_result.png"]
    try:
        driver.get(url)
        wait_until(lambda: driver.find_element(By.ID, "decision").get_attribute("class") == "live", 15, "live")
        wait_until(lambda: driver.find_element(By.ID, "decision-intent").text == "OPEN", 30, "an open decision")
        driver.save_screenshot(str(shots[0]))
        driver.find_element(By.ID, "patient").send_keys("P012")
        driver.find_element(By.ID, "btn-calibrate").click()
        wait_until(lambda: driver.find_element(By.ID, "cue-word").text == "OPEN", 30, "the OPEN cue")
        driver.save_screenshot(str(shots[1]))
        wait_until(lambda: "installed" in driver.find_element(By.ID, "cal-status").text, 60, "the result")
        driver.save_screenshot(str(shots[2]))
    finally:
        driver.quit()
        end_process(proc)
        rig.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return shots


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m rig.browser", description="the documentation's console screenshots (docs/img)"
    )
    p.add_argument("out", type=Path, help="directory for the PNG files (docs/img)")
    args = p.parse_args(argv)
    for path in screenshots(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The session report: one self-contained HTML page (print it to PDF from the browser).

What the console saw since it started: the calibrations (patient, accuracy before and after,
per-intent recall, confusion matrix, the gate's sentence, what was installed), installs and
rollbacks, the controller's state timeline and the commands sent to the orthosis.
"""

from __future__ import annotations

import html
import time

from console.hub import Hub
from console.jobs import Jobs
from metaemg.intents import INTENTS


def _t(t_wall) -> str:
    if not isinstance(t_wall, int | float):
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t_wall))


def _pct(x) -> str:
    return "-" if not isinstance(x, int | float) else f"{100 * x:.0f} %"


def _confusion(cm) -> str:
    if not isinstance(cm, list) or len(cm) != len(INTENTS):
        return ""
    head = "".join(f"<th>{n}</th>" for n in INTENTS)
    rows = "".join(
        f"<tr><th>{INTENTS[i]}</th>" + "".join(f"<td>{int(v)}</td>" for v in row) + "</tr>" for i, row in enumerate(cm)
    )
    return f"<table class=cm><tr><th>cued \\ decided</th>{head}</tr>{rows}</table>"


def session_report(hub: Hub, jobs: Jobs, models: dict) -> str:
    e = html.escape
    patients = sorted({j.patient for j in jobs.history if j.patient})
    parts = [
        "<!doctype html><html><head><meta charset=utf-8><title>MyHand session report</title>",
        '<link rel="stylesheet" href="/static/report.css"></head><body>',
        "<h1>MyHand session report</h1>",
        f"<p>Patient: <b>{e(', '.join(patients) or 'not given')}</b> · session from {_t(hub.started_wall)} to "
        f"{_t(time.time())} · state directory {e(str(models.get('state_dir')))}</p>",
    ]
    current = models.get("current")
    running = ((hub.status or {}).get("model") or {}).get("model_id")
    if current is None:
        parts.append(
            f"<p>No calibration installed in this state directory; the controller runs model {e(str(running))}.</p>"
        )
    else:
        parts.append(
            f"<p>Installed model: <b>{e(str(current.get('model_id')))}</b> "
            f"({'calibrated' if current.get('calibrated') else 'the uncalibrated base model'}"
            f"{', patient ' + e(str(current.get('patient'))) if current.get('patient') else ''}"
            f"{', session ' + e(str(current.get('time'))) if current.get('time') else ''}); "
            f"the controller runs model {e(str(running))}.</p>"
        )
    parts.append("<h2>Calibrations, installs and rollbacks</h2>")
    if not jobs.history:
        parts.append("<p>None in this session.</p>")
    for job in jobs.history:
        r = job.result or {}
        parts.append(f"<h3>{e(job.kind)} at {_t(job.started_wall)}: {e(job.state)}</h3>")
        if job.kind in ("calibrate", "install") and "accuracy_after" in r:
            recall_b, recall_a = r.get("recall_before") or {}, r.get("recall_after") or {}
            rows = "".join(
                f"<tr><td>{n}</td><td>{_pct(recall_b.get(n))}</td><td>{_pct(recall_a.get(n))}</td></tr>"
                for n in INTENTS
            )
            parts.append(
                f"<p>Patient {e(str(r.get('patient') or job.patient or '-'))}; clip {e(str(r.get('clip')))}</p>"
                f"<table><tr><th></th><th>before</th><th>after</th></tr>"
                f"<tr><td>accuracy</td><td>{_pct(r.get('accuracy_before'))}</td>"
                f"<td>{_pct(r.get('accuracy_after'))}</td></tr>{rows}</table>"
                f"{_confusion(r.get('confusion_after'))}"
                f"<p>Gate: {e(str((r.get('gate') or {}).get('line')))}</p>"
                + ("<p>Installed: model " + e(str(r.get("model_id"))) + "</p>" if r.get("installed") else "")
                + ("" if r.get("installed") else "<p>Nothing installed.</p>")
            )
        elif job.kind == "rollback" and r:
            parts.append(
                f"<p>Now model {e(str(r.get('model_id')))} (replaced {e(str(r.get('replaced_model_id')))})"
                f"{'' if r.get('calibrated', True) else ': the uncalibrated base model'}</p>"
            )
        elif job.to_dict()["error"]:
            parts.append(f"<p>{e(str(job.to_dict()['error']))}</p>")
    parts.append("<h2>Controller states</h2><table><tr><th>time</th><th>state</th><th>reason</th></tr>")
    for s in hub.timeline:
        parts.append(
            f"<tr><td>{_t(s['t_wall'])}</td><td>{e(str(s['state']))}</td><td>{e(str(s['reason'] or ''))}</td></tr>"
        )
    parts.append("</table><h2>Commands sent to the orthosis</h2><table><tr><th>intent</th><th>commands</th></tr>")
    for n in INTENTS:
        parts.append(f"<tr><td>{n}</td><td>{hub.commands.get(n, 0)}</td></tr>")
    parts.append("</table></body></html>")
    return "\n".join(parts)

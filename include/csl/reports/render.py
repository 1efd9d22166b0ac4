"""The report as files: one self-contained HTML page (inline SVG charts, inline CSS, no
script or font from the internet), a CSV per table and the whole report as JSON; and as
pandas DataFrames for notebooks.

Everything in a report that came from the database (query texts, names, keys) is escaped in
the page, and a CSV cell that a spreadsheet would run as a formula (starting with ``=``, ``+``,
``-``, ``@``, a tab or a carriage return) gets a leading ``'``."""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import html
import io
import json
import math
import re
from pathlib import Path
from typing import Any

__all__ = ["REPORT_FILES", "render_html", "table_csv", "to_frames", "to_json", "write_files"]

REPORT_FILES = re.compile(r"index\.html|report\.json|[a-z0-9_]+\.csv")  # every file write_files makes
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#be185d", "#4b5563")

SECTIONS = [
    ("Recommendations", ["recommendations"]),
    ("Top queries", ["top_queries_total_time", "top_queries_mean_time", "top_queries_calls", "top_queries_io"]),
    ("Regressions", ["regressions"]),
    ("Indexes", ["index_advice", "unused_indexes", "duplicate_indexes", "invalid_indexes"]),
    ("Tables", ["tables", "vacuum_analyze", "bloat_estimate", "bloat_pgstattuple", "wraparound", "sequences"]),
    ("Database", ["cache_hit_ratio", "connections", "sessions", "replicas"]),
    ("Our pipelines", ["pipeline_runs", "maintenance_actions", "index_builds", "settlement_runs", "storage_sweeps",
                       "storage_findings"]),
]

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#111827;background:#f9fafb}
header{background:#1f2937;color:#f9fafb;padding:16px 24px}header h1{margin:0 0 4px;font-size:20px}
main{padding:16px 24px;max-width:1400px}section{background:#fff;border:1px solid #e5e7eb;border-radius:8px;
padding:12px 16px;margin:0 0 16px}h2{font-size:17px;margin:4px 0 8px}h3{font-size:14px;margin:12px 0 6px;color:#374151}
table{border-collapse:collapse;width:100%;font-size:12px;margin-bottom:8px}th,td{border-bottom:1px solid #e5e7eb;
padding:4px 6px;text-align:left;vertical-align:top}th{background:#f3f4f6;position:sticky;top:0}
td.num{text-align:right;font-variant-numeric:tabular-nums}td code,pre{font:11px/1.35 ui-monospace,Menlo,monospace}
.cards{display:flex;flex-wrap:wrap;gap:8px}.card{background:#fff;border:1px solid #e5e7eb;border-radius:8px;
padding:8px 12px;min-width:130px}.card b{display:block;font-size:20px}.sev-high{color:#b91c1c;font-weight:600}
.sev-medium{color:#b45309}.notes li{color:#4b5563}.charts{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;border:1px solid #e5e7eb;border-radius:6px;padding:6px;background:#fff}figcaption{font-size:12px;color:#374151}
.empty{color:#6b7280;font-style:italic}a{color:#1d4ed8}
"""


def _plain(value: Any) -> Any:
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, default=lambda v: _plain(v) if _plain(v) is not v else str(v), indent=1)


def _cell(value: Any) -> str:
    value = _plain(value)
    if value is None:
        return '<td class="num">–</td>'
    if isinstance(value, bool):
        return f"<td>{'yes' if value else 'no'}</td>"
    if isinstance(value, (int, float)):
        text = f"{value:,}" if isinstance(value, int) else f"{value:,.4g}" if abs(value) < 1 else f"{value:,.2f}"
        return f'<td class="num">{text}</td>'
    if isinstance(value, (dict, list)):
        return f"<td><code>{html.escape(json.dumps(value, default=str))[:400]}</code></td>"
    text = str(value)
    if "\n" in text:
        return f"<td><pre>{html.escape(text)}</pre></td>"
    return f"<td>{html.escape(text)}</td>"


def _table(name: str, rows: list[dict[str, Any]] | None) -> str:
    title = name.replace("_", " ")
    if not rows:
        return f'<h3 id="t-{name}">{title}</h3><p class="empty" data-table="{name}">nothing to report</p>'
    columns = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for r in rows:
        cells = []
        for c in columns:
            if c == "severity":
                cells.append(f'<td class="sev-{html.escape(str(r.get(c)))}">{html.escape(str(r.get(c)))}</td>')
            elif c == "statement" and r.get(c):
                cells.append(f"<td><code>{html.escape(r[c])}</code></td>")
            else:
                cells.append(_cell(r.get(c)))
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<h3 id="t-{name}">{title} <small>({len(rows)} rows, <a href="{name}.csv">CSV</a>)</small></h3>'
            f'<table data-table="{name}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>')


def _fmt_axis(value: float, unit: str) -> str:
    if unit == "bytes":
        for u in ("B", "kB", "MB", "GB", "TB"):
            if abs(value) < 1024 or u == "TB":
                return f"{value:.0f} {u}" if u == "B" else f"{value:.1f} {u}"
            value /= 1024
    if unit == "ratio":
        return f"{value:.1%}"
    return f"{value:,.3g}"


def svg_bars(items: list[dict[str, Any]], *, title: str, unit: str = "ms", width: int = 600) -> str:
    """Horizontal bars (label, value), one per item."""
    if not items:
        return ""
    bar_h, left, top = 22, 230, 24
    height = top + bar_h * len(items) + 10
    peak = max(float(i["value"] or 0) for i in items) or 1.0
    parts = [(f'<svg class="chart" data-chart="bars" xmlns="http://www.w3.org/2000/svg" width="{width}" '
              f'height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">'),
             f'<text x="4" y="15" font-size="12" font-weight="600">{html.escape(title)}</text>']
    for n, item in enumerate(items):
        y = top + n * bar_h
        w = max(1.0, (width - left - 90) * float(item["value"] or 0) / peak)
        color = PALETTE[n % len(PALETTE)]
        parts.append(f'<text x="{left - 6}" y="{y + 14}" font-size="11" text-anchor="end">{html.escape(str(item["label"]))}</text>'
                     f'<rect x="{left}" y="{y + 3}" width="{w:.1f}" height="{bar_h - 7}" fill="{color}">'
                     f'<title>{html.escape(str(item.get("title", "")))}</title></rect>'
                     f'<text x="{left + w + 4:.1f}" y="{y + 14}" font-size="11">{_fmt_axis(float(item["value"] or 0), unit)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def svg_lines(chart: dict[str, Any], *, title: str, width: int = 600, height: int = 240) -> str:
    """A line chart: ``chart = {"x": [times], "series": [{"name", "points"}], "unit"}``."""
    xs = chart.get("x") or []
    series = [s for s in chart.get("series", []) if any(p is not None for p in s["points"])]
    if len(xs) < 2 or not series:
        return ""
    unit = chart.get("unit", "")
    left, right, top, bottom = 70, 10, 22, 46 + 14 * ((len(series) + 1) // 2)
    values = [p for s in series for p in s["points"] if p is not None]
    lo, hi = min(0.0, min(values)), max(values)
    hi = hi if hi > lo else lo + 1
    plot_w, plot_h = width - left - right, height - top - bottom
    t0, t1 = _ts(xs[0]), _ts(xs[-1])
    span = (t1 - t0) or 1.0
    px = lambda x: left + plot_w * (_ts(x) - t0) / span
    py = lambda v: top + plot_h * (1 - (v - lo) / (hi - lo))
    parts = [(f'<svg class="chart" data-chart="lines" xmlns="http://www.w3.org/2000/svg" width="{width}" '
              f'height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">'),
             f'<text x="4" y="15" font-size="12" font-weight="600">{html.escape(title)}</text>']
    for k in range(5):
        v = lo + (hi - lo) * k / 4
        y = py(v)
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e7eb"/>'
                     f'<text x="{left - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{_fmt_axis(v, unit)}</text>')
    for x, anchor in ((xs[0], "start"), (xs[-1], "end")):
        parts.append(f'<text x="{px(x):.1f}" y="{top + plot_h + 14}" font-size="10" text-anchor="{anchor}">'
                     f'{html.escape(_label(x))}</text>')
    for n, s in enumerate(series):
        color = PALETTE[n % len(PALETTE)]
        pts = [(px(x), py(v)) for x, v in zip(xs, s["points"]) if v is not None]
        if len(pts) > 1:
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="'
                         + " ".join(f"{a:.1f},{b:.1f}" for a, b in pts) + '"/>')
        for a, b in pts:
            parts.append(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="2.5" fill="{color}"/>')
        lx = left + (n % 2) * (plot_w // 2)
        ly = top + plot_h + 30 + 14 * (n // 2)
        parts.append(f'<rect x="{lx}" y="{ly - 8}" width="10" height="10" fill="{color}"/>'
                     f'<text x="{lx + 14}" y="{ly + 1}" font-size="11">{html.escape(s["name"][:38])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _ts(x: Any) -> float:
    if isinstance(x, str):
        x = dt.datetime.fromisoformat(x)
    return x.timestamp() if isinstance(x, dt.datetime) else float(x)


def _label(x: Any) -> str:
    if isinstance(x, str):
        x = dt.datetime.fromisoformat(x)
    return x.strftime("%m-%d %H:%M") if isinstance(x, dt.datetime) else str(x)


def render_html(report: dict[str, Any]) -> str:
    """One self-contained page: summary cards, notes, charts, every table."""
    meta, summary, charts = report["meta"], report["summary"], report["charts"]
    esc = lambda v: html.escape(str(_plain(v)))
    when = lambda v: v.strftime("%Y-%m-%d %H:%M:%S %Z") if isinstance(v, dt.datetime) else str(v or "–")
    cards = [("recommendations", summary["recommendations"]), ("high severity", summary["high"]),
             ("regressions", summary["regressions"]), ("index advice", summary["missing_index_advice"]),
             ("unused indexes", summary["unused_indexes"]), ("duplicate indexes", summary["duplicate_indexes"]),
             ("queries", summary["queries"]), ("DB time (ms)", f"{summary['db_time_ms']:,.0f}"),
             ("cache hit ratio", f"{summary['cache_hit_ratio']:.2%}" if summary["cache_hit_ratio"] is not None else "–")]
    figures = [svg_bars(charts.get("top_queries", []), title="Top queries by total time in the window (ms)"),
               svg_lines(charts.get("query_mean_ms", {}), title="Mean time per call of the top queries (ms)"),
               svg_lines(charts.get("hit_ratio", {}), title="Cache hit ratio per interval"),
               svg_lines(charts.get("table_bytes", {}), title="Table size (largest tables)"),
               svg_lines(charts.get("dead_tuples", {}), title="Dead tuples (most dead)")]
    figures = [f"<figure>{f}</figure>" for f in figures if f]
    if len(figures) < 2:
        figures.append('<p class="empty">Trend charts need two or more snapshots in the window.</p>')
    sections = []
    for title, names in SECTIONS:
        body = "".join(_table(n, report["tables"].get(n)) for n in names)
        sections.append(f'<section id="s-{title.lower().replace(" ", "-")}"><h2>{title}</h2>{body}</section>')
    notes = "".join(f"<li>{esc(n)}</li>" for n in meta["notes"] + [meta["excluded"]])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>Performance report {esc(meta['database'])} {esc(_label(meta['window_end']))}</title><style>{CSS}</style></head>
<body><header><h1>Performance report — {esc(meta['database'])}</h1>
<div>window {esc(meta['window'])}: {esc(when(meta['window_start']))} → {esc(when(meta['window_end']))} ·
snapshot {esc(meta['snapshot_id'])} (baseline: {esc(meta['baseline_snapshot_id'] or 'the statistics reset')}) ·
generated {esc(when(meta['generated_at']))}</div></header>
<main><section id="summary"><h2>Summary</h2><div class="cards">
{''.join(f'<div class="card"><b>{esc(v)}</b>{esc(k)}</div>' for k, v in cards)}</div>
<ul class="notes">{notes}</ul></section>
<section id="charts"><h2>Charts</h2><div class="charts">{''.join(figures)}</div></section>
{''.join(sections)}
<p class="empty">Data: <a href="report.json">report.json</a>; every table as CSV.</p></main></body></html>
"""


def columns_of(rows: list[dict[str, Any]]) -> list[str]:
    """A table's columns in first-seen order (jsonb storage sorts keys: keep this list with it)."""
    return list(dict.fromkeys(k for r in rows for k in r))


def _csv_value(value: Any) -> Any:
    value = json.dumps(value, default=str) if isinstance(value, (dict, list)) else _plain(value)
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value  # a spreadsheet shows it as text instead of running it
    return value


def table_csv(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """One table as CSV; text cells are protected against formula injection (see the module)."""
    out = io.StringIO()
    columns = columns or columns_of(rows)
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _csv_value(v) for k, v in r.items()})
    return out.getvalue()


def write_files(report: dict[str, Any], html_text: str, folder: Path) -> list[Path]:
    """``index.html``, ``report.json`` and ``<table>.csv`` for every table, in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / "index.html", folder / "report.json"]
    written[0].write_text(html_text)
    written[1].write_text(to_json(report))
    for name, rows in report["tables"].items():
        path = folder / f"{name}.csv"
        path.write_text(table_csv(rows) if rows else "")
        written.append(path)
    return written


def to_frames(report: dict[str, Any]) -> dict[str, Any]:
    """Every table of the report as a pandas DataFrame (pandas imported here, on demand)."""
    import pandas as pd

    return {name: pd.DataFrame([{k: _plain(v) for k, v in r.items()} for r in rows]) for name, rows in
            report["tables"].items()}

"""The report page: one self-contained ``index.html`` (no network, no external scripts or styles).

Thumbnails and curve plots are embedded as ``data:`` URIs; full-size overlays are relative links. Every
string that comes from the model (labels, metadata), from file names or from errors is untrusted: it is
passed through :func:`html.escape`, JSON in ``<script>`` blocks is escaped against ``</script>``, and a
Content-Security-Policy allows only the page's own script (by its SHA-256), so even a slip in escaping
could not run injected code.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import shlex
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from .plots import line_plot

THUMB = 224

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d1d1f;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:16px 0 6px}figure{margin:6px 0}
table{border-collapse:collapse;margin:6px 0}th,td{border:1px solid #ddd;padding:4px 7px;vertical-align:top}
th{background:#f4f4f6;text-align:left}table.sortable th{cursor:pointer;user-select:none}
table.sortable th[aria-sort=ascending]::after{content:" \\25B2"}table.sortable th[aria-sort=descending]::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums}.grid td{text-align:center}.grid td.info{text-align:left;max-width:16em;overflow-wrap:anywhere}
.grid img{display:block;margin:0 auto}.small{font-size:12px;color:#555}.bad{color:#b00020}.ok{color:#1b7f3b}
pre{background:#f6f6f8;padding:8px;overflow:auto;max-width:100%;white-space:pre-wrap;word-break:break-all}
.cap{font-size:12px;margin-top:3px}.hint{max-width:70em;color:#333}code{background:#f3f3f3;padding:0 3px}
"""

_JS = """(function(){
function val(row,i,num){var c=row.cells[i];if(!c)return num?-Infinity:'';var v=c.getAttribute('data-v');
if(v===null)v=c.textContent;if(num){var f=parseFloat(v);return isNaN(f)?-Infinity:f;}return v.toLowerCase();}
var tables=document.querySelectorAll('table.sortable');
for(var t=0;t<tables.length;t++){(function(table){var heads=table.tHead?table.tHead.rows[0].cells:[];
for(var i=0;i<heads.length;i++){(function(th,i){th.addEventListener('click',function(){
var num=th.getAttribute('data-type')==='num';var asc=th.getAttribute('aria-sort')!=='ascending';
for(var k=0;k<heads.length;k++)heads[k].removeAttribute('aria-sort');
th.setAttribute('aria-sort',asc?'ascending':'descending');var body=table.tBodies[0];
var rows=Array.prototype.slice.call(body.rows);rows.sort(function(a,b){var x=val(a,i,num),y=val(b,i,num);
return (x<y?-1:x>y?1:0)*(asc?1:-1);});for(var r=0;r<rows.length;r++)body.appendChild(rows[r]);});})(heads[i],i);}
})(tables[t]);}
function mark(){var im=document.images,ok=0;for(var k=0;k<im.length;k++){if(im[k].complete&&im[k].naturalWidth>0)ok++;}
document.body.setAttribute('data-images-total',String(im.length));
document.body.setAttribute('data-images-loaded',String(ok));document.body.setAttribute('data-ready','1');}
if(document.readyState==='complete')mark();else window.addEventListener('load',mark);
})();"""

_METRIC_HELP = {
    "deletion_auc": "deletion AUC (lower is better): class probability while the most salient pixels are "
                    "removed first",
    "insertion_auc": "insertion AUC (higher is better): class probability while the most salient pixels are "
                     "put back into a blurred copy first",
    "pointing_mask": "pointing game on the truth mask: the map's maximum within the tolerance of the region",
    "pointing_box": "pointing game on the truth box",
    "share_mask": "share of the positive saliency inside the truth mask",
    "share_box": "share of the positive saliency inside the truth box",
    "area_mask": "the mask's share of the image: what a map unrelated to it would get",
    "area_box": "the box's share of the image: what a map unrelated to it would get",
    "sanity_spearman_abs": "Spearman rank correlation of |map| with the original after the last randomised "
                           "layer (low = the map depends on the weights, as it should)",
    "sanity_ssim": "SSIM of the normalised |maps| after the last randomised layer",
}
_SUMMARY = ("deletion_auc", "insertion_auc", "pointing_mask", "share_mask", "area_mask", "pointing_box",
            "share_box", "area_box", "sanity_spearman_abs", "sanity_ssim", "seconds", "n_evals")
_ITEM = ("score", "probability", "deletion_auc", "insertion_auc", "pointing_mask", "share_mask", "area_mask",
         "pointing_box", "share_box", "area_box", "sanity_spearman_abs", "sanity_ssim", "seconds", "n_evals")


def esc(value: Any) -> str:
    """HTML-escape anything (quotes too, so it is safe in attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


def json_for_script(value: Any) -> str:
    """JSON that cannot end its <script> block or open a comment: <, >, & and line separators escaped."""
    text = json.dumps(value, sort_keys=True, allow_nan=False)
    for raw, safe in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                      ("\u2029", "\\u2029")):
        text = text.replace(raw, safe)
    return text


def _png_uri(rgb: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii") if ok else ""


def _thumbnail(path: Path) -> str | None:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        return None
    h, w = img.shape[:2]
    scale = THUMB / max(h, w)
    if scale < 1:
        img = cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 88])  # photos: a tenth of a PNG's size
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii") if ok else None


def _number(value: Any, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "hit" if value else "miss"
    if isinstance(value, int):
        return str(value)
    try:
        number = float(value)
        return str(int(number)) if number.is_integer() and abs(number) >= 10 else f"{number:.{digits}f}"
    except (TypeError, ValueError):
        return esc(value)


def _num_cell(value: Any, digits: int = 3) -> str:
    data = "" if value is None else (str(int(value)) if isinstance(value, bool) else str(value))
    return f'<td class="num" data-v="{esc(data)}">{_number(value, digits)}</td>'


def _curve_plot(record: dict[str, Any]) -> str | None:
    curves = record.get("curves") or {}
    series = [(f"{k[:3]} AUC {float(c['auc']):.3f}", c["fractions"], c["scores"]) for k, c in curves.items()
              if c and c.get("fractions") and c.get("auc") is not None]
    if not series:
        return None
    space = next(iter(curves.values())).get("score", "probability")
    ylim = (0.0, 1.0) if space == "probability" else None
    return _png_uri(line_plot(series, width=224, height=120, ylim=ylim, xlim=(0.0, 1.0), xlabel="fraction of pixels"))


def _sanity_plot(record: dict[str, Any]) -> str | None:
    steps = record.get("sanity") or []
    if not steps:
        return None
    xs = list(range(len(steps) + 1))
    series = [(name, xs, [1.0] + [s.get(key) if s.get(key) is not None else float("nan") for s in steps])
              for name, key in (("rank |map|", "spearman_abs"), ("rank map", "spearman"), ("SSIM", "ssim"))]
    return _png_uri(line_plot(series, width=360, height=200, ylim=(-1.0, 1.0), xticks=xs if len(xs) <= 12 else None,
                              title=f"{record.get('method')}: randomised layers (top-down)", markers=True,
                              xlabel="layers randomised"))


def _group(records: Sequence[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    order: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        order.setdefault(r.get("key", ""), []).append(r)
    return list(order.items())


def _model_card(card: dict[str, Any]) -> str:
    inp, outp = card.get("input") or {}, card.get("output") or {}
    pre = dict(card.get("preprocess") or {})
    labels = card.get("labels")
    ops = card.get("ops") or {}
    rows = [
        ("file", card.get("file") or card.get("path")), ("sha256", card.get("sha256")),
        ("size", f"{card.get('size_bytes')} bytes"), ("producer", card.get("producer") or "-"),
        ("IR / opset", f"IR {card.get('ir_version')}, opset {card.get('opset')}"),
        ("precision", card.get("precision")),
        ("input", f"{inp.get('name')} {inp.get('dtype')} {inp.get('shape')} {inp.get('layout')}"),
        ("output", f"{outp.get('name')} {outp.get('dtype')} {outp.get('shape')}: {outp.get('classes')} classes, "
                   f"{outp.get('kind')} (detected {outp.get('kind_detected')})"),
        ("batch", f"{card.get('batch')} (batch size {card.get('batch_size')})"),
        ("provider", card.get("provider")),
        ("preprocessing", f"{pre.pop('source', '')}: {json.dumps(pre, sort_keys=True)}"),
        ("labels", f"{labels.get('source')}: {', '.join(labels.get('first') or [])}, ..." if labels else
         "none (class indices)"),
        ("gradient support", card.get("gradient_support", "unknown")),
    ]
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
    op_rows = "".join(f"<tr><td>{esc(op)}</td><td class=\"num\">{esc(n)}</td></tr>" for op, n in ops.items())
    return (f"<table>{body}</table><details><summary>operator histogram ({len(ops)} op types, "
            f"{sum(int(v) for v in ops.values())} nodes)</summary><table class=\"sortable\"><thead><tr>"
            f"<th>op</th><th data-type=\"num\">count</th></tr></thead><tbody>{op_rows}</tbody></table></details>")


def _methods_table(methods: dict[str, dict[str, Any]]) -> str:
    columns = [c for c in _SUMMARY if any(m.get(c) is not None for m in methods.values())]
    head = "".join(f'<th data-type="num" title="{esc(_METRIC_HELP.get(c, ""))}">{esc(c)}</th>' for c in columns)
    rows = []
    for name, m in methods.items():
        cells = "".join(_num_cell(m.get(c)) for c in columns)
        rows.append(f"<tr><td>{esc(name)}</td>{_num_cell(m.get('ok'))}{_num_cell(m.get('failed'))}{cells}</tr>")
    return (f'<table class="sortable" id="methods"><thead><tr><th>method</th><th data-type="num">ok</th>'
            f'<th data-type="num">failed</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>')


def _grid(out: Path, groups: list[tuple[str, list[dict[str, Any]]]], methods: Sequence[str]) -> str:
    head = "".join(f"<th>{esc(m)}</th>" for m in methods)
    rows = []
    for key, items in groups:
        first = items[0]
        by_method = {r.get("method"): r for r in items}
        ok = next((r for r in items if r.get("status") == "ok"), None)
        info = f'<div><b>{esc(Path(str(first.get("image"))).name)}</b></div>'
        info += f'<div class="small">{esc(first.get("image"))}</div>'
        if ok is not None:
            info += (f'<div class="cap">target {esc(ok.get("target"))}: <b>{esc(ok.get("label"))}</b> '
                     f'(p={_number(ok.get("probability"))})</div>')
            tops = "".join(f"<li>{esc(t.get('label'))} {_number(t.get('probability'))}</li>"
                           for t in ok.get("top") or [])
            info += f'<ol class="small">{tops}</ol>'
        cells = []
        for method in methods:
            r = by_method.get(method)
            if r is None:
                cells.append("<td></td>")
                continue
            if r.get("status") != "ok":
                cells.append(f'<td class="bad">failed: {esc(r.get("error"))}</td>')
                continue
            overlay = (r.get("files") or {}).get("overlay", "")
            thumb = _thumbnail(out / overlay) if overlay else None
            picture = (f'<a href="{esc(overlay)}"><img src="{thumb}" alt="{esc(method)} overlay"></a>' if thumb
                       else '<div class="bad">overlay missing</div>')
            m = r.get("metrics") or {}
            caption = f'{esc(r.get("score_space"))} {_number(r.get("score"))}'
            if m.get("deletion_auc") is not None or m.get("insertion_auc") is not None:
                caption += f' &middot; del {_number(m.get("deletion_auc"))} &middot; ins {_number(m.get("insertion_auc"))}'
            for region in ("mask", "box"):
                if m.get(f"share_{region}") is not None:
                    caption += (f'<br>{region}: {_number(m.get(f"pointing_{region}"))}, saliency share '
                                f'{_number(m.get(f"share_{region}"))} (area {_number(m.get(f"area_{region}"))})')
            curve = _curve_plot(r)
            plot = f'<img src="{curve}" alt="deletion and insertion curves">' if curve else ""
            cells.append(f'<td>{picture}<div class="cap">{caption}</div>{plot}</td>')
        rows.append(f'<tr><td class="info">{info}</td>{"".join(cells)}</tr>')
    return f'<table class="grid"><thead><tr><th>image</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _items_table(records: Sequence[dict[str, Any]]) -> str:
    columns = [c for c in _ITEM if any((r.get("metrics") or {}).get(c) is not None or r.get(c) is not None
                                       for r in records)]
    head = "".join(f'<th data-type="num" title="{esc(_METRIC_HELP.get(c, ""))}">{esc(c)}</th>' for c in columns)
    rows = []
    for r in records:
        m = r.get("metrics") or {}
        status = ('<span class="ok">ok</span>' if r.get("status") == "ok"
                  else f'<span class="bad">failed</span>: {esc(r.get("error"))}')
        cells = "".join(_num_cell(m.get(c) if c in m else r.get(c)) for c in columns)
        rows.append(f"<tr><td>{esc(Path(str(r.get('image'))).name)}</td><td>{esc(r.get('method'))}</td>"
                    f"<td>{status}</td><td>{esc(r.get('label'))}</td>{cells}</tr>")
    return (f'<table class="sortable" id="items"><thead><tr><th>image</th><th>method</th><th>status</th>'
            f'<th>label</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>')


def _sanity(records: Sequence[dict[str, Any]]) -> str:
    parts = []
    for r in records:
        plot = _sanity_plot(r) if r.get("status") == "ok" else None
        if not plot:
            continue
        layers = "".join(f"<li>{esc(s.get('layer'))} ({esc(s.get('op_type'))})</li>" for s in r.get("sanity") or [])
        parts.append(f'<tr><td>{esc(Path(str(r.get("image"))).name)}<br>{esc(r.get("method"))}</td>'
                     f'<td><img src="{plot}" alt="sanity check curves"></td><td><ol class="small">{layers}</ol>'
                     f"</td></tr>")
    if not parts:
        return ""
    return ("<h2>Sanity checks (model parameter randomisation)</h2><p class=\"hint\">Each curve starts at 1 (the "
            "trained model) and shows how similar the map stays while layers are randomised from the output "
            "down. A method whose map stays similar does not depend on what the model learned (Adebayo et al. "
            f"2018).</p><table>{''.join(parts)}</table>")


def render(out: Path, *, run: dict[str, Any], methods: dict[str, dict[str, Any]],
           records: Sequence[dict[str, Any]], inside: dict[str, Any] | None = None,
           sections: Sequence[str] = ()) -> str:
    """The page as a string (the caller writes it atomically); ``inside``: the model-level section;
    ``sections``: more HTML fragments (already escaped by their makers, e.g. the data-set findings),
    shown after the methods summary."""
    from .inside import render_section

    out = Path(out)
    card = run.get("model") or {}
    config = run.get("config") or {}
    names = list(methods)
    n_ok = sum(1 for r in records if r.get("status") == "ok")
    n_failed = len(records) - n_ok
    groups = _group(records)
    command = run.get("command")
    command_text = shlex.join(command) if command else "(run from Python)"
    data = {"run": run, "methods": methods, "inside": inside,
            "results": [{k: v for k, v in r.items() if k not in ("curves", "sanity")} for r in records]}
    script_hash = base64.b64encode(hashlib.sha256(_JS.encode("utf-8")).digest()).decode("ascii")
    csp = f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'"
    help_items = "".join(f"<li><code>{esc(k)}</code>: {esc(v)}</li>" for k, v in _METRIC_HELP.items())
    tolerance = config.get("tolerance")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{esc(csp)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>blackbox report: {esc(Path(str(card.get('file') or card.get('path') or 'model')).name)}</title>
<style>{_CSS}</style></head>
<body data-images-loaded="pending">
<h1>blackbox report</h1>
<p class="small">{esc(card.get('file') or card.get('path'))} &middot; {len(groups)} image(s) &times; {len(names)} method(s):
<span class="ok">{n_ok} ok</span>, <span class="{'bad' if n_failed else 'ok'}">{n_failed} failed</span></p>
<h2>Methods (means over images)</h2>
{_methods_table(methods)}
<details class="hint"><summary>what the columns mean</summary><ul>{help_items}</ul>
<p>Pointing tolerance: {esc(tolerance)} model-input pixels. Curves use {esc(config.get('step') or 'H*W/224')}
pixels per step. Click a column header to sort.</p></details>
{"".join(sections)}
{render_section(out, inside)}
<h2>Images &times; methods</h2>
{_grid(out, groups, names)}
<h2>Metrics per image and method</h2>
{_items_table(records)}
{_sanity(records)}
<h2>Model</h2>
{_model_card(card)}
<h2>Reproduce</h2>
<pre>{esc(command_text)}</pre>
<details><summary>configuration and versions</summary><pre>{esc(json.dumps({'config': config, 'versions': run.get('versions'), 'registered_methods': run.get('registered_methods')}, indent=1, sort_keys=True))}</pre></details>
<script type="application/json" id="blackbox-results">{json_for_script(data)}</script>
<script>{_JS}</script>
</body></html>
"""

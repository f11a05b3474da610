"""The report page: ``index.html`` with its data beside it, usable for 10,000 images (no network at all).

``index.html`` holds the summary (counts, the methods table, the data-set findings and the model-level
section the caller passes in, the model card, the command to reproduce the run) and a small script; it
does not grow with the number of images. The per-record data the page shows lives in ``results.js`` beside
it (``window.__blackbox = {...}``: a ``<script src>`` works from ``file://``, where ``fetch`` does not), and
the script draws from it a paginated grid of images x methods (filters by predicted class, method, status,
file name and a metric range; sorting by any metric of any method), a paginated metrics table (click a
header to sort the filtered rows) and the sanity-check curves. Pictures are files under ``thumbs/``
(JPEG thumbnails of the overlays, PNG curve plots), loaded lazily as they scroll into view, each linking to
the full-size overlay under ``items/``. They are named by a digest of what they show, so a later run (or
``--resume``) reuses them and replaces only what changed.

Every string that comes from the model (labels, metadata), from file names or from errors is untrusted: in
the page it is passed through :func:`html.escape`; in the data it is JSON with ``<``, ``>``, ``&`` and the
line separators escaped, and the script puts it into the page only as text (``textContent``, never
``innerHTML``). A Content-Security-Policy allows only the page's own inline script (by its SHA-256) and
scripts and images from the page's own origin (``'self'``: same-folder files on ``file://``) or ``data:``,
so even a slip in escaping could not run injected code.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
import shlex
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np

from ..errors import ParameterError
from ..files import write_atomic
from .plots import line_plot

THUMB = 224
DATA_FILE = "results.js"   # the page's per-record data, beside index.html
THUMBS = "thumbs"          # the page's pictures (derived from the records; safe to delete)
PAGE_SIZE = 24             # image rows per grid page (the page lets the reader choose 12 to 96)
EAGER_ROWS = 8             # the first rows of a page load at once, the rest when scrolled into view

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d1d1f;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:16px 0 6px}figure{margin:6px 0}
table{border-collapse:collapse;margin:6px 0}th,td{border:1px solid #ddd;padding:4px 7px;vertical-align:top}
th{background:#f4f4f6;text-align:left}table.sortable th{cursor:pointer;user-select:none}
table.sortable th[aria-sort=ascending]::after{content:" \\25B2"}table.sortable th[aria-sort=descending]::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums}.grid td{text-align:center}.grid td.info{text-align:left;max-width:16em;overflow-wrap:anywhere}
.grid img{display:block;margin:0 auto}.grid img.thumb{max-width:224px;max-height:224px;min-width:32px;min-height:32px}
.small{font-size:12px;color:#555}.bad{color:#b00020}.ok{color:#1b7f3b}
pre{background:#f6f6f8;padding:8px;overflow:auto;max-width:100%;white-space:pre-wrap;word-break:break-all}
.cap{font-size:12px;margin-top:3px}.hint{max-width:70em;color:#333}code{background:#f3f3f3;padding:0 3px}
.controls{display:flex;flex-wrap:wrap;gap:6px 14px;align-items:center;margin:8px 0;padding:8px;background:#f6f6f8}
.controls label{white-space:nowrap}.controls input[type=number]{width:6em}
.pager{display:flex;gap:6px;align-items:center;margin:6px 0}.pager button{min-width:2.4em}
table.jsort th{cursor:pointer;user-select:none}
table.jsort th[aria-sort=ascending]::after{content:" \\25B2"}table.jsort th[aria-sort=descending]::after{content:" \\25BC"}
"""

_JS = r"""(function(){
'use strict';
var body=document.body;
function mark(){var im=document.images,ok=0,bad=0;for(var k=0;k<im.length;k++){if(im[k].complete&&im[k].naturalWidth>0)ok++;
else if(im[k].getAttribute('data-failed'))bad++;}
body.setAttribute('data-images-total',String(im.length));body.setAttribute('data-images-loaded',String(ok));
body.setAttribute('data-images-failed',String(bad));}
function val(row,i,num){var c=row.cells[i];if(!c)return num?-Infinity:'';var v=c.getAttribute('data-v');
if(v===null)v=c.textContent;if(num){var f=parseFloat(v);return isNaN(f)?-Infinity:f;}return v.toLowerCase();}
var tables=document.querySelectorAll('table.sortable');
for(var t=0;t<tables.length;t++){(function(table){var heads=table.tHead?table.tHead.rows[0].cells:[];
for(var i=0;i<heads.length;i++){(function(th,i){th.addEventListener('click',function(){
var num=th.getAttribute('data-type')==='num';var asc=th.getAttribute('aria-sort')!=='ascending';
for(var k=0;k<heads.length;k++)heads[k].removeAttribute('aria-sort');
th.setAttribute('aria-sort',asc?'ascending':'descending');var b=table.tBodies[0];
var rows=Array.prototype.slice.call(b.rows);rows.sort(function(a,c){var x=val(a,i,num),y=val(c,i,num);
return (x<y?-1:x>y?1:0)*(asc?1:-1);});for(var r=0;r<rows.length;r++)b.appendChild(rows[r]);});})(heads[i],i);}
})(tables[t]);}
var D=window.__blackbox;
function $(id){return document.getElementById(id);}
function el(tag,props,kids){var e=document.createElement(tag);if(props){for(var k in props){if(k==='text')e.textContent=props[k];
else if(k==='cls')e.className=props[k];else e.setAttribute(k,props[k]);}}
if(kids){for(var i=0;i<kids.length;i++){var c=kids[i];if(c===null||c===undefined)continue;
e.appendChild(typeof c==='string'?document.createTextNode(c):c);}}return e;}
function picture(src,alt,eager,cls){var im=el('img',{alt:alt});if(cls)im.className=cls;if(!eager)im.loading='lazy';
im.addEventListener('load',mark);im.addEventListener('error',function(){im.setAttribute('data-failed','1');mark();});
im.src=src;return im;}
function fmt(v,mode){if(v===null||v===undefined)return '';if(typeof v==='boolean')return v?'hit':'miss';
if(typeof v!=='number')return String(v);if(mode==='i'||(Math.abs(v)>=10&&v===Math.round(v)))return String(v);return v.toFixed(3);}
if(!D||!$('grid')){body.setAttribute('data-ready',D?'1':'no-data');if(!D&&$('nodata'))$('nodata').hidden=false;
if(document.readyState==='complete')mark();else window.addEventListener('load',mark);return;}
var M=D.methods,I=D.images,R=D.records,C=D.columns,INT={};
for(var n=0;n<D.ints.length;n++)INT[D.ints[n]]=1;
function num(r,c){var x=r.x||{};var v=x[c];return (v===undefined||v===null)?null:(typeof v==='boolean'?(v?1:0):v);}
function show(r,c){return fmt((r.x||{})[c],INT[c]?'i':'');}
var by=[];for(var i0=0;i0<I.length;i0++)by.push(new Array(M.length).fill(null));
for(var j=0;j<R.length;j++){by[R[j].i][R[j].m]=R[j];}
var combos=[];for(var mi=0;mi<M.length;mi++){for(var ci=0;ci<C.length;ci++){
for(var rj=0;rj<R.length;rj++){if(R[rj].m===mi&&num(R[rj],C[ci])!==null){combos.push({c:C[ci],m:mi});break;}}}}
var classes={};for(var i1=0;i1<I.length;i1++){var cl=I[i1].c;if(cl!==null&&cl!==undefined)classes[cl]=(classes[cl]||0)+1;}
function opt(sel,value,text){sel.appendChild(el('option',{value:value,text:text}));}
var fc=$('f-class'),fm=$('f-method'),fx=$('f-metric'),so=$('f-sort');
Object.keys(classes).sort().forEach(function(k){opt(fc,k,k+' ('+classes[k]+')');});
M.forEach(function(m,k){opt(fm,String(k),m);});
combos.forEach(function(c,k){var t=c.c+' \u00b7 '+M[c.m];opt(fx,String(k),t);opt(so,String(k),t);});
var st={page:0,tpage:0,spage:0,tcol:-1,tasc:false};
function read(){var g=function(id){return $(id).value;};st.cls=g('f-class');st.method=g('f-method');st.status=g('f-status');
st.text=g('f-text').trim().toLowerCase();st.metric=g('f-metric');var lo=parseFloat(g('f-min')),hi=parseFloat(g('f-max'));
st.min=isNaN(lo)?null:lo;st.max=isNaN(hi)?null:hi;st.sort=g('f-sort');st.desc=g('f-order')==='desc';st.size=parseInt(g('f-size'),10)||24;}
function methodsShown(){return st.method===''?M.map(function(_,k){return k;}):[parseInt(st.method,10)];}
function passes(ii,ms){var im=I[ii];if(st.cls!==''&&im.c!==st.cls)return false;
if(st.text&&(im.n+'\n'+im.p).toLowerCase().indexOf(st.text)<0)return false;
var rs=ms.map(function(k){return by[ii][k];}).filter(function(r){return r!==null;});if(!rs.length)return false;
if(st.status!==''&&!rs.some(function(r){return (r.ok?'ok':'failed')===st.status;}))return false;
if(st.metric!==''){var c=combos[parseInt(st.metric,10)],r=by[ii][c.m],v=r?num(r,c.c):null;if(v===null)return false;
if(st.min!==null&&v<st.min)return false;if(st.max!==null&&v>st.max)return false;}return true;}
function sortKey(ii){if(st.sort==='')return ii;if(st.sort==='name')return I[ii].n.toLowerCase();
var c=combos[parseInt(st.sort,10)],r=by[ii][c.m];return r?num(r,c.c):null;}
function order(list){if(st.sort==='')return list;var keys={};list.forEach(function(ii){keys[ii]=sortKey(ii);});
return list.slice().sort(function(a,b){var x=keys[a],y=keys[b];if(x===null&&y===null)return a-b;if(x===null)return 1;if(y===null)return -1;
var d=x<y?-1:x>y?1:0;return (st.desc?-d:d)||a-b;});}
var images=[];
function pager(id,page,pages,count,what,go){var p=$(id);p.textContent='';
function btn(t,to,dis){var x=el('button',{type:'button',text:t});x.disabled=dis;x.addEventListener('click',function(){go(to);});return x;}
p.appendChild(btn('\u00ab',0,page<=0));p.appendChild(btn('\u2039',page-1,page<=0));
p.appendChild(el('span',{cls:'small',text:'page '+(pages?page+1:0)+' of '+pages+' \u00b7 '+count+' '+what}));
p.appendChild(btn('\u203a',page+1,page>=pages-1));p.appendChild(btn('\u00bb',pages-1,page>=pages-1));}
function cell(r,eager){var td=el('td');if(r===null)return td;var x=r.x||{};
if(!r.ok){td.className='bad';td.textContent='failed: '+(r.e||'');return td;}
if(r.th){var a=el('a',{href:r.o||r.th});a.appendChild(picture(r.th,M[r.m]+' overlay',eager,'thumb'));td.appendChild(a);}
else td.appendChild(el('div',{cls:'bad',text:'overlay missing'}));
var cap=el('div',{cls:'cap'});cap.appendChild(document.createTextNode((r.ss||'')+' '+fmt(r.s)));
if(x.deletion_auc!==undefined||x.insertion_auc!==undefined)cap.appendChild(document.createTextNode(' \u00b7 del '+fmt(x.deletion_auc)+' \u00b7 ins '+fmt(x.insertion_auc)));
['mask','box'].forEach(function(g){if(x['share_'+g]!==undefined&&x['share_'+g]!==null){cap.appendChild(el('br'));
cap.appendChild(document.createTextNode(g+': '+fmt(x['pointing_'+g])+', saliency share '+fmt(x['share_'+g])+' (area '+fmt(x['area_'+g])+')'));}});
td.appendChild(cap);if(r.cv)td.appendChild(picture(r.cv,'deletion and insertion curves',eager));return td;}
function drawGrid(){var ms=methodsShown(),pages=Math.ceil(images.length/st.size);if(st.page>=pages)st.page=Math.max(0,pages-1);
var head=$('grid').tHead.rows[0];head.textContent='';head.appendChild(el('th',{text:'image'}));ms.forEach(function(k){head.appendChild(el('th',{text:M[k]}));});
var tb=$('grid').tBodies[0];tb.textContent='';var start=st.page*st.size,slice=images.slice(start,start+st.size);
slice.forEach(function(ii,row){var im=I[ii],tr=el('tr'),info=el('td',{cls:'info'});
info.appendChild(el('div',null,[el('b',{text:im.n})]));info.appendChild(el('div',{cls:'small',text:im.p}));
var ok=null;for(var k=0;k<M.length;k++){if(by[ii][k]&&by[ii][k].ok){ok=by[ii][k];break;}}
if(ok){info.appendChild(el('div',{cls:'cap'},['target '+ok.t+': ',el('b',{text:ok.l===null?'':String(ok.l)}),' (p='+fmt(ok.p)+')']));
var ol=el('ol',{cls:'small'});(im.top||[]).forEach(function(t){ol.appendChild(el('li',{text:t[0]+' '+fmt(t[1])}));});info.appendChild(ol);}
tr.appendChild(info);ms.forEach(function(k){tr.appendChild(cell(by[ii][k],row<D.eager));});tb.appendChild(tr);});
pager('grid-pager',st.page,pages,images.length,'image(s) of '+I.length,function(p){st.page=p;drawGrid();mark();$('images').scrollIntoView();});}
var rows=[];
function tval(r,c){if(c===0)return I[r.i].n.toLowerCase();if(c===1)return M[r.m];if(c===2)return r.ok?'ok':'failed';if(c===3)return r.l===null?'':String(r.l).toLowerCase();return num(r,C[c-4]);}
function drawTable(){var list=rows;if(st.tcol>=0){var c=st.tcol;list=rows.slice().sort(function(a,b){var x=tval(a,c),y=tval(b,c);
if(x===null&&y===null)return 0;if(x===null)return 1;if(y===null)return -1;return (x<y?-1:x>y?1:0)*(st.tasc?1:-1);});}
var size=100,pages=Math.ceil(list.length/size);if(st.tpage>=pages)st.tpage=Math.max(0,pages-1);
var tb=$('items').tBodies[0];tb.textContent='';list.slice(st.tpage*size,st.tpage*size+size).forEach(function(r){var x=r.x||{};
var status=r.ok?el('span',{cls:'ok',text:'ok'}):el('span',null,[el('span',{cls:'bad',text:'failed'}),': '+(r.e||'')]);
var tr=el('tr',null,[el('td',{text:I[r.i].n}),el('td',{text:M[r.m]}),el('td',null,[status]),el('td',{text:r.l===null||r.l===undefined?'':String(r.l)})]);
C.forEach(function(c){var v=x[c];tr.appendChild(el('td',{cls:'num','data-v':v===null||v===undefined?'':String(typeof v==='boolean'?(v?1:0):v),text:show(r,c)}));});tb.appendChild(tr);});
pager('items-pager',st.tpage,pages,list.length,'row(s)',function(p){st.tpage=p;drawTable();});}
var heads=$('items').tHead.rows[0].cells;for(var h=0;h<heads.length;h++){(function(th,k){th.addEventListener('click',function(){
st.tasc=st.tcol===k?!st.tasc:(k<4);st.tcol=k;for(var q=0;q<heads.length;q++)heads[q].removeAttribute('aria-sort');
th.setAttribute('aria-sort',st.tasc?'ascending':'descending');st.tpage=0;drawTable();});})(heads[h],h);}
function drawSanity(){var t=$('sanity');if(!t)return;var list=rows.filter(function(r){return r.ok&&r.sn;}),size=10,pages=Math.ceil(list.length/size);
if(st.spage>=pages)st.spage=Math.max(0,pages-1);var tb=t.tBodies[0];tb.textContent='';
list.slice(st.spage*size,st.spage*size+size).forEach(function(r){var ol=el('ol',{cls:'small'});(r.ly||[]).forEach(function(l){ol.appendChild(el('li',{text:l}));});
tb.appendChild(el('tr',null,[el('td',null,[I[r.i].n,el('br'),M[r.m]]),el('td',null,[picture(r.sn,'sanity check curves',true)]),el('td',null,[ol])]));});
pager('sanity-pager',st.spage,pages,list.length,'curve(s)',function(p){st.spage=p;drawSanity();});}
function update(){read();var ms=methodsShown(),list=[];for(var ii=0;ii<I.length;ii++){if(passes(ii,ms))list.push(ii);}
images=order(list);rows=[];images.forEach(function(ii){ms.forEach(function(k){var r=by[ii][k];
if(r!==null&&(st.status===''||(r.ok?'ok':'failed')===st.status))rows.push(r);});});
drawGrid();drawTable();drawSanity();mark();}
['f-class','f-method','f-status','f-metric','f-sort','f-order','f-size'].forEach(function(id){$(id).addEventListener('change',function(){st.page=st.tpage=st.spage=0;update();});});
['f-text','f-min','f-max'].forEach(function(id){$(id).addEventListener('input',function(){st.page=st.tpage=st.spage=0;update();});});
$('f-reset').addEventListener('click',function(){['f-class','f-method','f-status','f-metric','f-sort','f-text','f-min','f-max'].forEach(function(id){$(id).value='';});
$('f-order').value='desc';st.page=st.tpage=st.spage=0;update();});
$('controls').hidden=false;update();body.setAttribute('data-ready','1');
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


def _png_bytes(rgb: np.ndarray) -> bytes | None:
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    return buf.tobytes() if ok else None


def _thumbnail_bytes(path: Path) -> bytes | None:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        return None
    h, w = img.shape[:2]
    scale = THUMB / max(h, w)
    if scale < 1:
        img = cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 88])  # photos: a tenth of a PNG's size
    return buf.tobytes() if ok else None


def _curve_png(record: dict[str, Any]) -> bytes | None:
    curves = record.get("curves") or {}
    series = [(f"{k[:3]} AUC {float(c['auc']):.3f}", c["fractions"], c["scores"]) for k, c in curves.items()
              if c and c.get("fractions") and c.get("auc") is not None]
    if not series:
        return None
    space = next(iter(curves.values())).get("score", "probability")
    ylim = (0.0, 1.0) if space == "probability" else None
    return _png_bytes(line_plot(series, width=224, height=120, ylim=ylim, xlim=(0.0, 1.0),
                                xlabel="fraction of pixels"))


def _sanity_png(record: dict[str, Any]) -> bytes | None:
    steps = record.get("sanity") or []
    if not steps:
        return None
    xs = list(range(len(steps) + 1))
    series = [(name, xs, [1.0] + [s.get(key) if s.get(key) is not None else float("nan") for s in steps])
              for name, key in (("rank |map|", "spearman_abs"), ("rank map", "spearman"), ("SSIM", "ssim"))]
    return _png_bytes(line_plot(series, width=360, height=200, ylim=(-1.0, 1.0),
                                xticks=xs if len(xs) <= 12 else None,
                                title=f"{record.get('method')}: randomised layers (top-down)", markers=True,
                                xlabel="layers randomised"))


_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def _safe(text: Any) -> str:
    name = _SAFE.sub("_", str(text))[:120].lstrip(".")
    return name or "_"


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]


class _Pictures:
    """The page's picture files under ``thumbs/<key>/``, named ``<method>-<kind>-<digest>.<ext>`` by what
    they show (kind ``t``: the overlay's thumbnail, ``c``: deletion/insertion curves, ``s``: sanity
    curves). One that exists is reused; a new one is written atomically and replaces its older versions."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.jobs: list[tuple[Path, Callable[[], bytes | None]]] = []

    def want(self, record: dict[str, Any], kind: str, tag: str, ext: str,
             make: Callable[[], bytes | None]) -> str:
        rel = f"{THUMBS}/{_safe(record.get('key'))}/{_safe(record.get('method'))}-{kind}-{tag}.{ext}"
        path = self.out / rel
        if not path.is_file():
            self.jobs.append((path, make))
        return rel

    def _write(self, job: tuple[Path, Callable[[], bytes | None]]) -> Path | None:
        path, make = job
        data = make()
        if not data:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data, error=ParameterError)
        stem, kind = path.name.rsplit("-", 2)[:2]
        older = re.compile(rf"^{re.escape(stem)}-{re.escape(kind)}-[0-9a-f]{{16}}\.(jpg|png)$")
        for sibling in path.parent.iterdir():
            if sibling.name != path.name and older.match(sibling.name):
                try:
                    sibling.unlink()
                except OSError:
                    pass
        return path

    def write(self) -> set[Path]:
        """Make the missing pictures (a few threads: OpenCV releases the GIL); the paths that failed."""
        if not self.jobs:
            return set()
        workers = max(1, min(8, os.cpu_count() or 1, len(self.jobs)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            done = list(pool.map(self._write, self.jobs))
        return {job[0] for job, path in zip(self.jobs, done) if path is None}


def _short(value: Any) -> Any:
    """A number for the page's data: six significant digits (results.json and .parquet keep them all)."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return float(f"{number:.6g}") if np.isfinite(number) else None


def page_data(out: Path, records: Sequence[dict[str, Any]], methods: Sequence[str]) -> dict[str, Any]:
    """What the page's script shows (``results.js``), making the picture files it names on the way: images
    (name, path, key, predicted class, top-k), records (indices into images and methods, status, target,
    numbers, picture paths) and the metric columns present."""
    out = Path(out)
    names = list(methods)
    for r in records:
        if r.get("method") not in names:
            names.append(r.get("method"))
    method_index = {m: k for k, m in enumerate(names)}
    pictures = _Pictures(out)
    images: list[dict[str, Any]] = []
    image_index: dict[str, int] = {}
    rows: list[dict[str, Any]] = []
    for r in records:
        key = str(r.get("key", ""))
        if key not in image_index:
            image_index[key] = len(images)
            images.append({"n": Path(str(r.get("image"))).name, "p": str(r.get("image")), "k": key, "c": None,
                           "top": []})
        image = images[image_index[key]]
        ok = r.get("status") == "ok"
        if ok and image["c"] is None:
            top = r.get("top") or []
            image["c"] = str(top[0].get("label")) if top else (None if r.get("label") is None else str(r.get("label")))
            image["top"] = [[str(t.get("label")), _short(t.get("probability"))] for t in top]
        numbers = {**{c: r.get(c) for c in ("score", "probability", "seconds", "n_evals")}, **(r.get("metrics") or {})}
        row: dict[str, Any] = {"i": image_index[key], "m": method_index[r.get("method")], "ok": 1 if ok else 0,
                               "x": {c: _short(numbers[c]) for c in _ITEM if numbers.get(c) is not None}}
        if ok:
            row.update({"t": r.get("target"), "l": None if r.get("label") is None else str(r.get("label")),
                        "p": _short(r.get("probability")), "s": _short(r.get("score")), "ss": r.get("score_space")})
            overlay = str((r.get("files") or {}).get("overlay") or "")
            source = out / overlay if overlay else None
            if source is not None and source.is_file():
                row["o"] = overlay
                sha = (r.get("sha256") or {}).get("overlay")
                info = source.stat()
                tag = (str(sha)[:16] if re.fullmatch(r"[0-9a-f]{64}", str(sha or "")) else
                       _digest([overlay, info.st_mtime_ns, info.st_size]))
                row["th"] = pictures.want(r, "t", tag, "jpg", lambda s=source: _thumbnail_bytes(s))
            if any(c and c.get("fractions") for c in (r.get("curves") or {}).values()):
                row["cv"] = pictures.want(r, "c", _digest(r.get("curves")), "png", lambda r=r: _curve_png(r))
            if r.get("sanity"):
                row["sn"] = pictures.want(r, "s", _digest([r.get("method"), r.get("sanity")]), "png",
                                          lambda r=r: _sanity_png(r))
                row["ly"] = [f"{s.get('layer')} ({s.get('op_type')})" for s in r.get("sanity") or []]
        else:
            row["e"] = None if r.get("error") is None else str(r.get("error"))
        rows.append(row)
    failed = pictures.write()
    if failed:
        for row in rows:
            for kind in ("th", "cv", "sn"):
                if kind in row and out / row[kind] in failed:
                    del row[kind]
    columns = [c for c in _ITEM if any(c in row["x"] for row in rows)]
    return {"methods": names, "images": images, "records": rows, "columns": columns, "ints": ["n_evals"],
            "eager": EAGER_ROWS}


def render(out: Path, *, run: dict[str, Any], methods: dict[str, dict[str, Any]],
           records: Sequence[dict[str, Any]], inside: dict[str, Any] | None = None,
           sections: Sequence[str] = ()) -> str:
    """The page as a string (the caller writes it atomically, after this call); writes what the page loads
    beside it first: ``results.js`` (the per-record data) and the picture files under ``thumbs/``.
    ``inside``: the model-level section; ``sections``: more HTML fragments (already escaped by their
    makers, e.g. the data-set findings), shown after the methods summary."""
    from .inside import render_section

    out = Path(out)
    card = run.get("model") or {}
    config = run.get("config") or {}
    names = list(methods)
    n_ok = sum(1 for r in records if r.get("status") == "ok")
    n_failed = len(records) - n_ok
    data = page_data(out, records, names)
    write_atomic(out / DATA_FILE, f"window.__blackbox={json_for_script(data)};\n", error=ParameterError)
    summary = {"run": run, "methods": methods, "inside": inside, "records": len(records), "data": DATA_FILE}
    script_hash = base64.b64encode(hashlib.sha256(_JS.encode("utf-8")).digest()).decode("ascii")
    csp = (f"default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; "
           f"script-src 'self' 'sha256-{script_hash}'")
    help_items = "".join(f"<li><code>{esc(k)}</code>: {esc(v)}</li>" for k, v in _METRIC_HELP.items())
    tolerance = config.get("tolerance")
    command = run.get("command")
    command_text = shlex.join(command) if command else "(run from Python)"
    item_head = "".join(f'<th data-type="num" title="{esc(_METRIC_HELP.get(c, ""))}">{esc(c)}</th>'
                        for c in data["columns"])
    sanity = ""
    if any("sn" in row for row in data["records"]):
        sanity = ("<h2>Sanity checks (model parameter randomisation)</h2><p class=\"hint\">Each curve starts at 1 "
                  "(the trained model) and shows how similar the map stays while layers are randomised from the "
                  "output down. A method whose map stays similar does not depend on what the model learned "
                  "(Adebayo et al. 2018). The rows follow the filters above.</p>"
                  '<div class="pager" id="sanity-pager"></div><table id="sanity"><tbody></tbody></table>')
    sizes = "".join(f'<option value="{n}"{" selected" if n == PAGE_SIZE else ""}>{n}</option>'
                    for n in (12, 24, 48, 96))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{esc(csp)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>blackbox report: {esc(Path(str(card.get('file') or card.get('path') or 'model')).name)}</title>
<style>{_CSS}</style></head>
<body data-images-loaded="pending">
<h1>blackbox report</h1>
<p class="small">{esc(card.get('file') or card.get('path'))} &middot; {len(data['images'])} image(s) &times; {len(names)} method(s):
<span class="ok">{n_ok} ok</span>, <span class="{'bad' if n_failed else 'ok'}">{n_failed} failed</span>
&middot; every row: <a href="results.csv">results.csv</a>, <a href="results.parquet">results.parquet</a>,
<a href="results.json">results.json</a></p>
<h2>Methods (means over images)</h2>
{_methods_table(methods)}
<details class="hint"><summary>what the columns mean</summary><ul>{help_items}</ul>
<p>Pointing tolerance: {esc(tolerance)} model-input pixels. Curves use {esc(config.get('step') or 'H*W/224')}
pixels per step. Click a column header to sort.</p></details>
{"".join(sections)}
{render_section(out, inside)}
<span id="images"></span><h2>Images &times; methods</h2>
<p class="bad" id="nodata" hidden>The page's data ({esc(DATA_FILE)}) did not load: keep it beside index.html.</p>
<noscript><p class="bad">The grid and the metrics table are drawn by the page's script; every row is also in
results.csv and results.parquet.</p></noscript>
<div class="controls" id="controls" hidden>
<label>predicted class <select id="f-class"><option value="">all</option></select></label>
<label>method <select id="f-method"><option value="">all</option></select></label>
<label>status <select id="f-status"><option value="">all</option><option value="ok">ok</option><option value="failed">failed</option></select></label>
<label>file name <input type="search" id="f-text" placeholder="contains"></label>
<label>metric <select id="f-metric"><option value="">(none)</option></select></label>
<label>from <input type="number" id="f-min" step="any"></label><label>to <input type="number" id="f-max" step="any"></label>
<label>sort by <select id="f-sort"><option value="">input order</option><option value="name">file name</option></select></label>
<select id="f-order" aria-label="order"><option value="desc">descending</option><option value="asc">ascending</option></select>
<label>per page <select id="f-size">{sizes}</select></label>
<button type="button" id="f-reset">reset</button>
</div>
<div class="pager" id="grid-pager"></div>
<table class="grid" id="grid"><thead><tr><th>image</th></tr></thead><tbody></tbody></table>
<h2>Metrics per image and method</h2>
<p class="hint">The rows follow the filters above; click a column header to sort them all.</p>
<div class="pager" id="items-pager"></div>
<table class="jsort" id="items"><thead><tr><th>image</th><th>method</th><th>status</th><th>label</th>{item_head}</tr></thead><tbody></tbody></table>
{sanity}
<h2>Model</h2>
{_model_card(card)}
<h2>Reproduce</h2>
<pre>{esc(command_text)}</pre>
<details><summary>configuration and versions</summary><pre>{esc(json.dumps({'config': config, 'versions': run.get('versions'), 'registered_methods': run.get('registered_methods')}, indent=1, sort_keys=True))}</pre></details>
<script type="application/json" id="blackbox-summary">{json_for_script(summary)}</script>
<script src="{esc(DATA_FILE)}"></script>
<script>{_JS}</script>
</body></html>
"""

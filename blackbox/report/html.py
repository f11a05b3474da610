"""The report page: ``index.html`` with its data beside it, usable for 10,000 images (no network at all).

``index.html`` holds the summary (counts, the methods table, the data-set findings and the model-level
section the caller passes in, the model card, the command to reproduce the run) and a small script; it
does not grow with the number of images. The per-record data the page shows lives in ``results.js`` beside
it (``window.__blackbox = {...}``: a ``<script src>`` works from ``file://``, where ``fetch`` does not), and
the script draws from it a paginated grid of images x methods (filters by predicted class, method, status,
file name and a metric range; sorting by any metric of any method), a paginated metrics table (click a
header to sort the filtered rows) and the sanity-check curves. Pictures are files under ``thumbs/``
(JPEG thumbnails of the overlays and of the originals, PNG curve plots, one PNG strip per colour map),
loaded lazily as they scroll into view. They are named by a digest of what they show, so a later run (or
``--resume``) reuses them and replaces only what changed.

Each grid row is one image: its name, a target selector when the image has several targets (the page has
one too: "show every image's #k target"), the probability, logit and log-probability of the selected
target, its top-k, a button to compare two methods side by side (large, the same image and target), and
the original picture (the model's crop outlined, linking to the file). Each map: its overlay (a click
opens the full-size PNG in a lightbox), the colour bar in the map's own units (the overlay's exact range,
:mod:`blackbox.report.colorbar`), the explained score and metrics, links to the overlay PNG and the NPZ,
the record's notes as warnings, and the deletion/insertion curves.

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
.warn{color:#8a4b00}select.target{max-width:15em}.notes{max-width:224px;margin:4px auto 0;text-align:left;font-size:11px;color:#8a4b00}
.notes li{margin:2px 0}.cbar{max-width:224px;margin:3px auto 0}.cbar img{display:block;width:100%;height:10px;
border:1px solid #bbb;image-rendering:pixelated}.cbar .ticks{display:flex;justify-content:space-between;font-size:10px;
color:#444;font-variant-numeric:tabular-nums}.links{font-size:11px;margin-top:2px}.grid button.zoom{border:0;padding:0;
background:none;cursor:zoom-in;display:block;margin:0 auto}.grid img.orig{max-width:224px;max-height:224px}
.modal{position:fixed;inset:0;background:rgba(0,0,0,.72);z-index:10;display:flex;align-items:center;
justify-content:center}.modal[hidden]{display:none}.modal .box{background:#fff;padding:12px;border-radius:6px;
max-width:96vw;max-height:94vh;overflow:auto;position:relative}.modal .close{position:absolute;right:8px;top:6px;
font-size:20px;border:0;background:none;cursor:pointer}#lightbox-img{display:block;width:min(90vw,1100px);height:76vh;
object-fit:contain;image-rendering:pixelated;margin-top:6px}.modal .box>.cap{padding-right:28px}.pair{display:flex;gap:14px;align-items:flex-start}.pair figure{margin:0;
text-align:center}.pair img.big{display:block;width:min(44vw,640px);image-rendering:pixelated}.pair .cbar{max-width:none}#lightbox-bar,#lightbox-notes{max-width:40em}
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
function el(tag,props,kids){var e=document.createElement(tag);if(props){for(var k in props){
if(k==='text')e.textContent=props[k];else if(k==='cls')e.className=props[k];else e.setAttribute(k,props[k]);}}
if(kids){for(var i=0;i<kids.length;i++){var c=kids[i];if(c===null||c===undefined)continue;
e.appendChild(typeof c==='string'?document.createTextNode(c):c);}}return e;}
function picture(src,alt,eager,cls){var im=el('img',{alt:alt});if(cls)im.className=cls;if(!eager)im.loading='lazy';
im.addEventListener('load',mark);im.addEventListener('error',function(){im.setAttribute('data-failed','1');mark();});
im.src=src;return im;}
function fmt(v,mode){if(v===null||v===undefined)return '';if(typeof v==='boolean')return v?'hit':'miss';
if(typeof v!=='number')return String(v);if(mode==='i'||(Math.abs(v)>=10&&v===Math.round(v)))return String(v);
return v.toFixed(3);}
function g3(v){if(v===null||v===undefined)return '';if(v===0)return '0';var a=Math.abs(v);
return (a>=1e4||a<1e-3)?v.toExponential(2):String(Number(v.toPrecision(3)));}
if(!D||!$('grid')){body.setAttribute('data-ready',D?'1':'no-data');if(!D&&$('nodata'))$('nodata').hidden=false;
if(document.readyState==='complete')mark();else window.addEventListener('load',mark);return;}
var M=D.methods,I=D.images,R=D.records,C=D.columns,BARS=D.bars||{},INT={};
for(var n=0;n<D.ints.length;n++)INT[D.ints[n]]=1;
function num(r,c){var x=r.x||{};var v=x[c];return (v===undefined||v===null)?null:(typeof v==='boolean'?(v?1:0):v);}
function show(r,c){return fmt((r.x||{})[c],INT[c]?'i':'');}
var by=[];for(var i0=0;i0<I.length;i0++){var row0=[];for(var m0=0;m0<M.length;m0++)row0.push([]);by.push(row0);}
for(var j=0;j<R.length;j++){by[R[j].i][R[j].m][R[j].q||0]=R[j];}
var combos=[];for(var mi=0;mi<M.length;mi++){for(var ci=0;ci<C.length;ci++){
for(var rj=0;rj<R.length;rj++){if(R[rj].m===mi&&num(R[rj],C[ci])!==null){combos.push({c:C[ci],m:mi});break;}}}}
var classes={};for(var i1=0;i1<I.length;i1++){var cl=I[i1].c;if(cl!==null&&cl!==undefined)classes[cl]=(classes[cl]||0)+1;}
function opt(sel,value,text){sel.appendChild(el('option',{value:value,text:text}));}
var fc=$('f-class'),fm=$('f-method'),fx=$('f-metric'),so=$('f-sort');
Object.keys(classes).sort().forEach(function(k){opt(fc,k,k+' ('+classes[k]+')');});
M.forEach(function(m,k){opt(fm,String(k),m);});
combos.forEach(function(c,k){var t=(D.names[c.c]||c.c)+' \u00b7 '+M[c.m];opt(fx,String(k),t);opt(so,String(k),t);});
var st={page:0,tpage:0,spage:0,tcol:-1,tasc:false,rank:0},sel={};
function slotOf(ii){var n=(I[ii].ts||[]).length||1,k=(ii in sel)?sel[ii]:st.rank;return Math.min(k,n-1);}
function rec(ii,m){var r=by[ii][m][slotOf(ii)];return r===undefined?null:r;}
function read(){var g=function(id){return $(id).value;};st.cls=g('f-class');st.method=g('f-method');
st.status=g('f-status');st.text=g('f-text').trim().toLowerCase();st.metric=g('f-metric');
var lo=parseFloat(g('f-min')),hi=parseFloat(g('f-max'));st.min=isNaN(lo)?null:lo;st.max=isNaN(hi)?null:hi;
st.sort=g('f-sort');st.desc=g('f-order')==='desc';st.size=parseInt(g('f-size'),10)||24;
st.rank=parseInt(g('f-target'),10)||0;}
function methodsShown(){return st.method===''?M.map(function(_,k){return k;}):[parseInt(st.method,10)];}
function passes(ii,ms){var im=I[ii];if(st.cls!==''&&im.c!==st.cls)return false;
if(st.text&&(im.n+'\n'+im.p).toLowerCase().indexOf(st.text)<0)return false;
var rs=ms.map(function(k){return rec(ii,k);}).filter(function(r){return r!==null;});if(!rs.length)return false;
if(st.status!==''&&!rs.some(function(r){return (r.ok?'ok':'failed')===st.status;}))return false;
if(st.metric!==''){var c=combos[parseInt(st.metric,10)],r=rec(ii,c.m),v=r?num(r,c.c):null;if(v===null)return false;
if(st.min!==null&&v<st.min)return false;if(st.max!==null&&v>st.max)return false;}return true;}
function sortKey(ii){if(st.sort==='')return ii;if(st.sort==='name')return I[ii].n.toLowerCase();
var c=combos[parseInt(st.sort,10)],r=rec(ii,c.m);return r?num(r,c.c):null;}
function order(list){if(st.sort==='')return list;var keys={};list.forEach(function(ii){keys[ii]=sortKey(ii);});
return list.slice().sort(function(a,b){var x=keys[a],y=keys[b];if(x===null&&y===null)return a-b;
if(x===null)return 1;if(y===null)return -1;var d=x<y?-1:x>y?1:0;return (st.desc?-d:d)||a-b;});}
var images=[];
function pager(id,page,pages,count,what,go){var p=$(id);p.textContent='';
function btn(t,to,dis){var x=el('button',{type:'button',text:t});x.disabled=dis;
x.addEventListener('click',function(){go(to);});return x;}
p.appendChild(btn('\u00ab',0,page<=0));p.appendChild(btn('\u2039',page-1,page<=0));
p.appendChild(el('span',{cls:'small',text:'page '+(pages?page+1:0)+' of '+pages+' \u00b7 '+count+' '+what}));
p.appendChild(btn('\u203a',page+1,page>=pages-1));p.appendChild(btn('\u00bb',pages-1,page>=pages-1));}
function targetText(t){if(!t)return '';var name=(t.l===null||t.l===undefined)?(t.s||'?'):t.l;
return name+(t.t!==null&&t.t!==undefined?' ('+t.t+')':'')+(t.p!==null&&t.p!==undefined?', p='+fmt(t.p):'');}
function colorbar(r){if(!r.cb||!BARS[r.cb[3]])return null;var lo=r.cb[0],hi=r.cb[1],signed=r.cb[2];
var d=el('div',{cls:'cbar','data-kind':'colorbar','data-low':String(lo),'data-high':String(hi),
title:'the overlay\u2019s colours span the map\u2019s values '+g3(lo)+' to '+g3(hi)+' (the method\u2019s attribution '+
'units); values beyond are drawn in the end colours'+(signed?'; 0 is the middle, and the overlay\u2019s opacity follows '+
'|value|':'')});d.appendChild(picture(BARS[r.cb[3]],'colour scale',true));
d.appendChild(el('div',{cls:'ticks'},[el('span',{text:'\u2264'+g3(lo)}),el('span',{text:signed?'0':g3((lo+hi)/2)}),
el('span',{text:'\u2265'+g3(hi)})]));if(r.cb[4])d.appendChild(el('div',{cls:'small',text:'shown as '+r.cb[4]}));return d;}
function notes(r){if(!r.n||!r.n.length)return null;var ul=el('ul',{cls:'notes','data-kind':'notes'});
r.n.forEach(function(t){ul.appendChild(el('li',{cls:'note',text:'\u26a0 '+t}));});return ul;}
function explained(r){return 'explained '+(r.ss||'score')+' '+g3(r.s);}
function cell(r,eager){var td=el('td');if(r===null)return td;var x=r.x||{};
if(!r.ok){td.className='bad';td.textContent='failed: '+(r.e||'');return td;}
if(r.th){var b=el('button',{type:'button',cls:'zoom',title:'click to zoom'});
b.appendChild(picture(r.th,M[r.m]+' overlay',eager,'thumb'));b.addEventListener('click',function(){zoom(r);});
td.appendChild(b);}else td.appendChild(el('div',{cls:'bad',text:'overlay missing'}));
var bar=colorbar(r);if(bar)td.appendChild(bar);
var cap=el('div',{cls:'cap'});cap.appendChild(document.createTextNode(explained(r)));
if(x.deletion_auc!==undefined)cap.appendChild(document.createTextNode(' \u00b7 del '+fmt(x.deletion_auc)));
if(x.insertion_auc!==undefined)cap.appendChild(document.createTextNode(' \u00b7 ins '+fmt(x.insertion_auc)));
['mask','box'].forEach(function(g){if(x['share_'+g]!==undefined&&x['share_'+g]!==null){cap.appendChild(el('br'));
cap.appendChild(document.createTextNode(g+': '+fmt(x['pointing_'+g])+', saliency share '+fmt(x['share_'+g])+
' (area '+fmt(x['area_'+g])+')'));}});td.appendChild(cap);
var links=el('div',{cls:'links'});if(r.o)links.appendChild(el('a',{href:r.o,text:'overlay PNG'}));
if(r.z){if(r.o)links.appendChild(document.createTextNode(' \u00b7 '));links.appendChild(el('a',{href:r.z,text:'NPZ'}));}
td.appendChild(links);var nt=notes(r);if(nt)td.appendChild(nt);
if(r.cv)td.appendChild(picture(r.cv,'deletion and insertion curves',eager));return td;}
function scores(ii){var ms=M.map(function(_,k){return k;});for(var k=0;k<ms.length;k++){var r=rec(ii,k);
if(r&&r.ok){var x=r.x||{},out='p='+g3(x.probability);if(x.logit!==undefined)out+=' \u00b7 logit '+g3(x.logit);
if(x.log_probability!==undefined)out+=' \u00b7 log-probability '+g3(x.log_probability);return out;}}return '';}
function drawGrid(){var ms=methodsShown(),pages=Math.ceil(images.length/st.size);
if(st.page>=pages)st.page=Math.max(0,pages-1);var head=$('grid').tHead.rows[0];head.textContent='';
head.appendChild(el('th',{text:'image'}));head.appendChild(el('th',{text:'original'}));
ms.forEach(function(k){head.appendChild(el('th',{text:M[k]}));});
var tb=$('grid').tBodies[0];tb.textContent='';var start=st.page*st.size,slice=images.slice(start,start+st.size);
slice.forEach(function(ii,row){var im=I[ii],tr=el('tr',{'data-image':String(ii)}),info=el('td',{cls:'info'});
info.appendChild(el('div',null,[el('b',{text:im.n})]));info.appendChild(el('div',{cls:'small',text:im.p}));
var ts=im.ts||[],q=slotOf(ii);
if(ts.length>1){var s=el('select',{cls:'target','aria-label':'target class of '+im.n});
ts.forEach(function(t,k){opt(s,String(k),'#'+(k+1)+' '+targetText(t));});s.value=String(q);
s.addEventListener('change',function(){sel[ii]=parseInt(s.value,10);drawGrid();mark();});
info.appendChild(el('div',{cls:'cap'},['target ',s]));}
else if(ts.length&&ts[0].t!==null&&ts[0].t!==undefined)info.appendChild(el('div',{cls:'cap'},
['target '+ts[0].t+': ',el('b',{text:ts[0].l===null?'':String(ts[0].l)})]));
var sc=scores(ii);if(sc)info.appendChild(el('div',{cls:'cap'},[sc]));
if(im.top&&im.top.length){var ol=el('ol',{cls:'small'});
im.top.forEach(function(t){ol.appendChild(el('li',{text:t[0]+' '+fmt(t[1])}));});info.appendChild(ol);}
if(M.length>1){var cb=el('button',{type:'button',cls:'cmp-open',text:'compare methods'});
cb.addEventListener('click',function(){openCompare(ii);});info.appendChild(cb);}
tr.appendChild(info);var orig=el('td',{cls:'orig'});
if(im.o){var a=el('a',{href:im.src,title:'the original file'});a.appendChild(picture(im.o,'original picture',
row<D.eager,'orig'));orig.appendChild(a);}else orig.appendChild(el('div',{cls:'small',text:'(no thumbnail)'}));
orig.appendChild(el('div',{cls:'links'},[el('a',{href:im.src,text:'original file'})]));tr.appendChild(orig);
ms.forEach(function(k){tr.appendChild(cell(rec(ii,k),row<D.eager));});tb.appendChild(tr);});
pager('grid-pager',st.page,pages,images.length,'image(s) of '+I.length,function(p){st.page=p;drawGrid();mark();
$('images').scrollIntoView();});}
var rows=[];
function tval(r,c){if(c===0)return I[r.i].n.toLowerCase();if(c===1)return M[r.m];if(c===2)return r.ok?'ok':'failed';
if(c===3)return r.l===null||r.l===undefined?'':String(r.l).toLowerCase();return num(r,C[c-4]);}
function drawTable(){var list=rows;if(st.tcol>=0){var c=st.tcol;list=rows.slice().sort(function(a,b){
var x=tval(a,c),y=tval(b,c);if(x===null&&y===null)return 0;if(x===null)return 1;if(y===null)return -1;
return (x<y?-1:x>y?1:0)*(st.tasc?1:-1);});}
var size=100,pages=Math.ceil(list.length/size);if(st.tpage>=pages)st.tpage=Math.max(0,pages-1);
var tb=$('items').tBodies[0];tb.textContent='';list.slice(st.tpage*size,st.tpage*size+size).forEach(function(r){
var x=r.x||{};var status=r.ok?el('span',{cls:r.n&&r.n.length?'warn':'ok',text:r.n&&r.n.length?'ok, '+r.n.length+
' warning(s)':'ok'}):el('span',null,[el('span',{cls:'bad',text:'failed'}),': '+(r.e||'')]);
var tr=el('tr',null,[el('td',{text:I[r.i].n}),el('td',{text:M[r.m]}),el('td',null,[status]),
el('td',{text:r.l===null||r.l===undefined?'':String(r.l)})]);
C.forEach(function(c){var v=x[c];tr.appendChild(el('td',{cls:'num','data-v':v===null||v===undefined?'':
String(typeof v==='boolean'?(v?1:0):v),text:show(r,c)}));});tb.appendChild(tr);});
pager('items-pager',st.tpage,pages,list.length,'row(s)',function(p){st.tpage=p;drawTable();});}
var heads=$('items').tHead.rows[0].cells;for(var h=0;h<heads.length;h++){(function(th,k){
th.addEventListener('click',function(){st.tasc=st.tcol===k?!st.tasc:(k<4);st.tcol=k;
for(var q=0;q<heads.length;q++)heads[q].removeAttribute('aria-sort');
th.setAttribute('aria-sort',st.tasc?'ascending':'descending');st.tpage=0;drawTable();});})(heads[h],h);}
function drawSanity(){var t=$('sanity');if(!t)return;var list=rows.filter(function(r){return r.ok&&r.sn;}),size=10,
pages=Math.ceil(list.length/size);if(st.spage>=pages)st.spage=Math.max(0,pages-1);var tb=t.tBodies[0];tb.textContent='';
list.slice(st.spage*size,st.spage*size+size).forEach(function(r){var ol=el('ol',{cls:'small'});
(r.ly||[]).forEach(function(l){ol.appendChild(el('li',{text:l}));});
tb.appendChild(el('tr',null,[el('td',null,[I[r.i].n,el('br'),M[r.m],el('br'),r.l===null||r.l===undefined?'':
String(r.l)]),el('td',null,[picture(r.sn,'sanity check curves',true)]),el('td',null,[ol])]));});
pager('sanity-pager',st.spage,pages,list.length,'curve(s)',function(p){st.spage=p;drawSanity();});}
function update(){read();var ms=methodsShown(),list=[];for(var ii=0;ii<I.length;ii++){if(passes(ii,ms))list.push(ii);}
images=order(list);rows=[];images.forEach(function(ii){ms.forEach(function(k){by[ii][k].forEach(function(r){
if(r&&(st.status===''||(r.ok?'ok':'failed')===st.status))rows.push(r);});});});
drawGrid();drawTable();drawSanity();mark();}
var lb=$('lightbox'),cmp=$('compare'),ca=$('cmp-a'),cbm=$('cmp-b'),ct=$('cmp-t'),cmpImage=-1;
function zoom(r){$('lightbox-cap').textContent=I[r.i].n+' \u00b7 '+M[r.m]+' \u00b7 '+
targetText((I[r.i].ts||[])[r.q||0])+' \u00b7 '+explained(r);var old=$('lightbox-img');if(old)old.parentNode.removeChild(old);
var im=picture(r.o||r.th,M[r.m]+' overlay, full size',true);im.id='lightbox-img';lb.firstChild.appendChild(im);
var bar=colorbar(r),oldbar=$('lightbox-bar');if(oldbar)oldbar.parentNode.removeChild(oldbar);
if(bar){bar.id='lightbox-bar';lb.firstChild.appendChild(bar);}var oldnt=$('lightbox-notes');
if(oldnt)oldnt.parentNode.removeChild(oldnt);var nt=notes(r);if(nt){nt.id='lightbox-notes';lb.firstChild.appendChild(nt);}
lb.hidden=false;}
$('lightbox-close').addEventListener('click',function(){lb.hidden=true;});
lb.addEventListener('click',function(e){if(e.target===lb)lb.hidden=true;});
M.forEach(function(m,k){opt(ca,String(k),m);opt(cbm,String(k),m);});
function figure(fig,ii,m,q){fig.textContent='';var r=by[ii][m][q];fig.setAttribute('data-method',M[m]);
fig.appendChild(el('figcaption',{cls:'cap'},[el('b',{text:M[m]})]));
if(!r){fig.appendChild(el('div',{cls:'small',text:'not computed'}));return;}
if(!r.ok){fig.appendChild(el('div',{cls:'bad',text:'failed: '+(r.e||'')}));return;}
if(r.o||r.th)fig.appendChild(picture(r.o||r.th,M[m]+' overlay, full size',true,'big'));
var bar=colorbar(r);if(bar)fig.appendChild(bar);fig.appendChild(el('div',{cls:'cap',text:explained(r)}));
var nt=notes(r);if(nt)fig.appendChild(nt);}
function drawCompare(){var ii=cmpImage;if(ii<0)return;var q=parseInt(ct.value,10)||0;
$('compare-cap').textContent=I[ii].n+' \u00b7 '+targetText((I[ii].ts||[])[q]);
figure($('cmp-fig-a'),ii,parseInt(ca.value,10),q);figure($('cmp-fig-b'),ii,parseInt(cbm.value,10),q);mark();}
function openCompare(ii){cmpImage=ii;ct.textContent='';(I[ii].ts||[]).forEach(function(t,k){
opt(ct,String(k),'#'+(k+1)+' '+targetText(t));});ct.value=String(slotOf(ii));var ms=methodsShown();
ca.value=String(ms.length>1?ms[0]:0);cbm.value=String(ms.length>1?ms[1]:(M.length>1?1:0));drawCompare();cmp.hidden=false;}
[ca,cbm,ct].forEach(function(e){e.addEventListener('change',drawCompare);});
$('compare-close').addEventListener('click',function(){cmp.hidden=true;});
cmp.addEventListener('click',function(e){if(e.target===cmp)cmp.hidden=true;});
document.addEventListener('keydown',function(e){if(e.key==='Escape'){lb.hidden=true;cmp.hidden=true;}});
['f-class','f-method','f-status','f-metric','f-sort','f-order','f-size','f-target'].forEach(function(id){
$(id).addEventListener('change',function(){if(id==='f-target')sel={};st.page=st.tpage=st.spage=0;update();});});
['f-text','f-min','f-max'].forEach(function(id){$(id).addEventListener('input',function(){
st.page=st.tpage=st.spage=0;update();});});
$('f-reset').addEventListener('click',function(){['f-class','f-method','f-status','f-metric','f-sort','f-text','f-min',
'f-max'].forEach(function(id){$(id).value='';});$('f-order').value='desc';$('f-target').value='0';sel={};
st.page=st.tpage=st.spage=0;update();});
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
_COLUMN_NAMES = {"score": "explained score", "log_probability": "log-probability", "n_evals": "evaluations"}
_METRIC_HELP.update({
    "probability": "the target class's probability",
    "log_probability": "the natural log of the target class's probability (for a model that outputs logits: "
                       "its log-softmax)",
    "logit": "the target class's logit (only for a model that outputs logits: one that outputs probabilities "
             "has no logits to report)",
    "score": "the score the method explained, in the space named beside it (logit, log-probability, "
             "probability)",
})
_SUMMARY = ("deletion_auc", "insertion_auc", "pointing_mask", "share_mask", "area_mask", "pointing_box",
            "share_box", "area_box", "sanity_spearman_abs", "sanity_ssim", "seconds", "n_evals")
_ITEM = ("probability", "log_probability", "logit", "score", "deletion_auc", "insertion_auc", "pointing_mask", "share_mask", "area_mask",
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
        rows.append(f"<tr><td>{esc(name)}</td>{_num_cell(m.get('ok'))}{_num_cell(m.get('failed'))}"
                    f"{_num_cell(m.get('warned'))}{cells}</tr>")
    return (f'<table class="sortable" id="methods"><thead><tr><th>method</th><th data-type="num">ok</th>'
            f'<th data-type="num">failed</th><th data-type="num" title="maps with a warning (shown under the map)">'
            f'warnings</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>')


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


def _original_bytes(path: str, crop: Any, size: Any) -> bytes | None:
    """A JPEG thumbnail of the picture the model was given, decoded as the model's preprocessing decodes
    it, with the model's crop outlined (yellow) when it leaves part of the picture out."""
    from ..image_io import read_image

    try:
        rgb = read_image(path)
    except Exception:  # noqa: BLE001 - the picture is gone or changed: no thumbnail, the page says so
        return None
    if rgb.ndim == 2 or rgb.shape[2] == 1:
        rgb = np.repeat(rgb.reshape(rgb.shape[0], rgb.shape[1], 1), 3, axis=2)
    h, w = rgb.shape[:2]
    scale = THUMB / max(h, w)
    img = np.ascontiguousarray(rgb[:, :, ::-1])
    if scale < 1:
        img = cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    elif scale > 1:  # small pictures (64 px shapes): enlarged with sharp pixels, as the overlays are
        img = cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_NEAREST)
    if crop and size and [int(v) for v in size] == [h, w]:
        y0, x0, y1, x1 = (float(v) for v in crop)
        if y0 > 0.5 or x0 > 0.5 or y1 < h - 0.5 or x1 < w - 0.5:
            fy, fx = img.shape[0] / h, img.shape[1] / w
            cv2.rectangle(img, (round(x0 * fx), round(y0 * fy)), (round(x1 * fx) - 1, round(y1 * fy) - 1),
                          (0, 215, 255), 2)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 88])
    return buf.tobytes() if ok else None


def _link(out: Path, path: str) -> str:
    """A relative URL from the page to a file (percent-encoded: a file name never reads as a scheme)."""
    from urllib.parse import quote

    try:
        rel = os.path.relpath(os.path.abspath(path), os.path.abspath(out))
    except ValueError:  # another drive (Windows)
        return Path(os.path.abspath(path)).as_uri()
    return quote(rel.replace(os.sep, "/"))


def _curve_png(record: dict[str, Any]) -> bytes | None:
    curves = record.get("curves") or {}
    series = [(f"{k[:3]} AUC {float(c['auc']):.3f}", c["fractions"], c["scores"]) for k, c in curves.items()
              if c and c.get("fractions") and c.get("auc") is not None]
    if not series:
        return None
    space = next(iter(curves.values())).get("score", "probability")
    ylim = (0.0, 1.0) if space == "probability" else None
    return _png_bytes(line_plot(series, width=224, height=150, ylim=ylim, xlim=(0.0, 1.0),
                                xlabel="fraction of pixels"))


def _sanity_png(record: dict[str, Any]) -> bytes | None:
    steps = record.get("sanity") or []
    if not steps:
        return None
    xs = list(range(len(steps) + 1))
    series = [(name, xs, [1.0] + [s.get(key) if s.get(key) is not None else float("nan") for s in steps])
              for name, key in (("rank |map|", "spearman_abs"), ("rank map", "spearman"), ("SSIM", "ssim"))]
    return _png_bytes(line_plot(series, width=360, height=220, ylim=(-1.0, 1.0),
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
    """The page's picture files under ``thumbs/<key>/``, named ``<stem>-<kind>-<digest>.<ext>`` by what
    they show (kind ``t``: the overlay's thumbnail, ``c``: deletion/insertion curves, ``s``: sanity
    curves, ``o``: the original picture, named ``original``; colour bars are ``thumbs/colorbar-*``). One that exists is reused; a new one is written atomically and replaces its older versions."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.jobs: list[tuple[Path, Callable[[], bytes | None]]] = []

    def want(self, record: dict[str, Any], kind: str, tag: str, ext: str,
             make: Callable[[], bytes | None]) -> str:
        from .run import record_stem_of

        return self.want_named(f"{_safe(record.get('key'))}/{_safe(record_stem_of(record))}", kind, tag, ext, make)

    def want_named(self, name: str, kind: str, tag: str, ext: str, make: Callable[[], bytes | None]) -> str:
        """``thumbs/<name>-<kind>-<tag>.<ext>``, made by ``make`` when it does not exist yet."""
        rel = f"{THUMBS}/{name}-{kind}-{tag}.{ext}"
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

    def write(self, progress: bool | None = False) -> set[Path]:
        """Make the missing pictures (a few threads: OpenCV releases the GIL); the paths that failed.
        ``progress``: a bar (None: only on a terminal) while they are made."""
        if not self.jobs:
            return set()
        from tqdm.auto import tqdm

        workers = max(1, min(8, os.cpu_count() or 1, len(self.jobs)))
        with ThreadPoolExecutor(max_workers=workers) as pool, \
                tqdm(total=len(self.jobs), unit="picture", desc="report page", dynamic_ncols=True,
                     disable=None if progress is None else not progress) as bar:
            done = []
            for path in pool.map(self._write, self.jobs):
                done.append(path)
                bar.update(1)
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


def _colorbar_key(bar: dict[str, Any]) -> str:
    return f"{_safe(bar.get('colormap') or 'jet')}-{'s' if bar.get('signed') else 'u'}"


def page_data(out: Path, records: Sequence[dict[str, Any]], methods: Sequence[str], *,
              progress: bool | None = False) -> dict[str, Any]:
    """What the page's script shows (``results.js``), making the picture files it names on the way: images
    (name, path, key, predicted class, top-k, the original's thumbnail and link, the targets explained),
    records (indices into images, methods and the image's targets, status, numbers, notes, colour-bar
    range, picture and file paths) and the metric columns present."""
    from .colorbar import colorbar_png

    out = Path(out)
    names = list(methods)
    for r in records:
        if r.get("method") not in names:
            names.append(r.get("method"))
    method_index = {m: k for k, m in enumerate(names)}
    pictures = _Pictures(out)
    images: list[dict[str, Any]] = []
    image_index: dict[str, int] = {}
    slots: list[dict[Any, int]] = []  # per image: slot name -> index into its "ts"
    rows: list[dict[str, Any]] = []
    bars: dict[str, str] = {}
    for r in records:
        key = str(r.get("key", ""))
        if key not in image_index:
            image_index[key] = len(images)
            source = str(r.get("image"))
            images.append({"n": Path(source).name, "p": source, "k": key, "c": None, "top": [], "ts": [],
                           "src": _link(out, source)})
            slots.append({})
        ii = image_index[key]
        image = images[ii]
        ok = r.get("status") == "ok"
        slot = r.get("slot")
        if slot not in slots[ii]:
            slots[ii][slot] = len(image["ts"])
            image["ts"].append({"s": slot, "t": None, "l": None, "p": None})
        target = image["ts"][slots[ii][slot]]
        if ok and target["t"] is None:
            target.update({"t": r.get("target"), "l": None if r.get("label") is None else str(r.get("label")),
                           "p": _short(r.get("probability"))})
        if ok and image["c"] is None:
            top = r.get("top") or []
            image["c"] = str(top[0].get("label")) if top else (None if r.get("label") is None else str(r.get("label")))
            image["top"] = [[str(t.get("label")), _short(t.get("probability"))] for t in top]
        if ok and "o" not in image:
            picture = r.get("picture") or {}
            source = Path(str(r.get("image")))
            try:
                info = source.stat()
            except OSError:
                info = None
            if info is not None:
                tag = _digest([str(source), info.st_mtime_ns, info.st_size, picture.get("crop")])
                image["o"] = pictures.want_named(
                    f"{_safe(key)}/original", "o", tag, "jpg",
                    lambda s=str(source), c=picture.get("crop"), z=picture.get("size"): _original_bytes(s, c, z))
        numbers = {**{c: r.get(c) for c in ("score", "probability", "log_probability", "logit", "seconds",
                                            "n_evals")}, **(r.get("metrics") or {})}
        row: dict[str, Any] = {"i": ii, "m": method_index[r.get("method")], "q": slots[ii][slot], "ok": 1 if ok else 0,
                               "x": {c: _short(numbers[c]) for c in _ITEM if numbers.get(c) is not None}}
        if ok:
            row.update({"t": r.get("target"), "l": None if r.get("label") is None else str(r.get("label")),
                        "p": _short(r.get("probability")), "s": _short(r.get("score")), "ss": r.get("score_space"),
                        "n": [str(n) for n in r.get("notes") or []]})
            files = r.get("files") or {}
            overlay = str(files.get("overlay") or "")
            source = out / overlay if overlay else None
            if source is not None and source.is_file():
                row["o"] = overlay
                sha = (r.get("sha256") or {}).get("overlay")
                info = source.stat()
                tag = (str(sha)[:16] if re.fullmatch(r"[0-9a-f]{64}", str(sha or "")) else
                       _digest([overlay, info.st_mtime_ns, info.st_size]))
                row["th"] = pictures.want(r, "t", tag, "jpg", lambda s=source: _thumbnail_bytes(s))
            if files.get("npz") and (out / str(files["npz"])).is_file():
                row["z"] = str(files["npz"])
            bar = r.get("colorbar")
            if isinstance(bar, dict) and bar.get("low") is not None and bar.get("high") is not None:
                name = _colorbar_key(bar)
                if name not in bars:
                    bars[name] = pictures.want_named(
                        f"colorbar-{name}", "b", "v1", "png",
                        lambda c=bar.get("colormap"), sg=bool(bar.get("signed")): colorbar_png(c, sg))
                row["cb"] = [_short(bar["low"]), _short(bar["high"]), 1 if bar.get("signed") else 0, name,
                             str(bar["display"]) if bar.get("display") else ""]
            if any(c and c.get("fractions") for c in (r.get("curves") or {}).values()):
                row["cv"] = pictures.want(r, "c", _digest(r.get("curves")), "png", lambda r=r: _curve_png(r))
            if r.get("sanity"):
                row["sn"] = pictures.want(r, "s", _digest([r.get("method"), r.get("sanity")]), "png",
                                          lambda r=r: _sanity_png(r))
                row["ly"] = [f"{s.get('layer')} ({s.get('op_type')})" for s in r.get("sanity") or []]
        else:
            row["e"] = None if r.get("error") is None else str(r.get("error"))
        rows.append(row)
    failed = pictures.write(progress=progress)
    if failed:
        for row in rows:
            for kind in ("th", "cv", "sn"):
                if kind in row and out / row[kind] in failed:
                    del row[kind]
        for image in images:
            if "o" in image and out / image["o"] in failed:
                del image["o"]
        bars = {k: v for k, v in bars.items() if out / v not in failed}
    columns = [c for c in _ITEM if any(c in row["x"] for row in rows)]
    return {"methods": names, "images": images, "records": rows, "columns": columns, "ints": ["n_evals"],
            "eager": EAGER_ROWS, "bars": bars, "names": {c: _COLUMN_NAMES.get(c, c) for c in columns}}


def render(out: Path, *, run: dict[str, Any], methods: dict[str, dict[str, Any]],
           records: Sequence[dict[str, Any]], inside: dict[str, Any] | None = None,
           sections: Sequence[str] = (), progress: bool | None = False) -> str:
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
    data = page_data(out, records, names, progress=progress)
    n_warned = sum(1 for r in records if r.get("status") == "ok" and r.get("notes"))
    n_targets = max((len(image["ts"]) for image in data["images"]), default=1)
    write_atomic(out / DATA_FILE, f"window.__blackbox={json_for_script(data)};\n", error=ParameterError)
    summary = {"run": run, "methods": methods, "inside": inside, "records": len(records), "data": DATA_FILE}
    script_hash = base64.b64encode(hashlib.sha256(_JS.encode("utf-8")).digest()).decode("ascii")
    csp = (f"default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; "
           f"script-src 'self' 'sha256-{script_hash}'")
    help_items = "".join(f"<li><code>{esc(k)}</code>: {esc(v)}</li>" for k, v in _METRIC_HELP.items())
    tolerance = config.get("tolerance")
    command = run.get("command")
    command_text = shlex.join(command) if command else "(run from Python)"
    item_head = "".join(f'<th data-type="num" title="{esc(_METRIC_HELP.get(c, ""))}">{esc(data["names"][c])}</th>'
                        for c in data["columns"])
    ranks = "".join(f'<option value="{k}">#{k + 1}</option>' for k in range(n_targets))
    warned = (f'<span class="warn">{n_warned} map(s) with warnings</span> (shown under each map)' if n_warned
              else '<span class="ok">no warnings</span>')
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
<span class="ok">{n_ok} ok</span>, <span class="{'bad' if n_failed else 'ok'}">{n_failed} failed</span>,
<span id="warned">{warned}</span> &middot; every row: <a href="results.csv">results.csv</a>, <a href="results.parquet">results.parquet</a>,
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
<label{'' if n_targets > 1 else ' hidden'}>target <select id="f-target" title="which of each image's explained classes the grid shows (each image has its own selector too)">{ranks}</select></label>
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
<div id="lightbox" class="modal" hidden role="dialog" aria-label="full-size map"><div class="box">
<button type="button" class="close" id="lightbox-close" aria-label="close">&times;</button>
<div class="cap" id="lightbox-cap"></div></div></div>
<div id="compare" class="modal" hidden role="dialog" aria-label="compare two methods"><div class="box">
<button type="button" class="close" id="compare-close" aria-label="close">&times;</button>
<div class="cap" id="compare-cap"></div>
<div class="controls"><label>left <select id="cmp-a"></select></label><label>right <select id="cmp-b"></select></label>
<label>target <select id="cmp-t"></select></label></div>
<div class="pair"><figure id="cmp-fig-a"></figure><figure id="cmp-fig-b"></figure></div></div></div>
<h2>Metrics per image and method</h2>
<p class="hint">The rows follow the filters above; click a column header to sort them all.</p>
<div class="pager" id="items-pager"></div>
<table class="jsort" id="items"><thead><tr><th>image</th><th>method</th><th>status</th><th>target</th>{item_head}</tr></thead><tbody></tbody></table>
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

"""Results that scale: ``results.parquet`` (typed, atomic), and a page that stays small and usable for
10,000 records (summary first, the grid drawn page by page from ``results.js``, thumbnails as files)."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import MODELS
from test_report_browser import CHROMIUM, _chromium

from blackbox.cli import main
from blackbox.report.html import DATA_FILE, render
from blackbox.report.run import CSV_COLUMNS
from blackbox.report.tables import results_table, write_parquet

EVIL = "<script>alert(1)</script>"
N = 10_000


def _records(n: int, *, methods=("occlusion",)) -> list[dict]:
    """Records shaped like the report's own (no model run), a few failed ones among them."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        key = f"img{i:05d}-{i * 7919 % 100000:05x}"
        for method in methods:
            if i % 997 == 5:
                records.append({"image": f"/data/set/img{i:05d}.jpg", "key": key, "method": method,
                                "status": "failed", "error": f"cannot decode {EVIL}"})
                continue
            cls = int(rng.integers(0, 10))
            p = float(rng.uniform(0.3, 1.0))
            records.append({
                "image": f"/data/set/img{i:05d}.jpg", "key": key, "method": method, "status": "ok", "error": None,
                "target": cls, "label": EVIL if cls == 3 else f"class {cls}", "score": p, "score_space": "probability",
                "probability": p, "params": {"window": 16, "stride": 8},
                "top": [{"index": cls, "label": EVIL if cls == 3 else f"class {cls}", "probability": p},
                        {"index": (cls + 1) % 10, "label": f"class {(cls + 1) % 10}", "probability": 1 - p}],
                "seconds": float(rng.uniform(0.01, 0.2)), "n_evals": 65,
                "metrics": {"deletion_auc": float(rng.uniform()), "insertion_auc": float(rng.uniform()),
                            **({"pointing_box": bool(i % 2), "share_box": 0.25, "area_box": 0.1} if i % 3 == 0
                               else {})},
                "files": {"overlay": f"items/{key}/{method}.png", "npz": f"items/{key}/{method}.npz"},
            })
    return records


RUN = {"model": {"file": "fake.onnx", "sha256": "0" * 64, "labels": None}, "config": {"tolerance": 15.0},
       "command": ["blackbox", "report", "fake.onnx", "/data/set"], "versions": {}}


def _overlays(out: Path, records: list[dict], count: int) -> None:
    for r in records[:count]:
        if r["status"] == "ok":
            path = out / r["files"]["overlay"]
            path.parent.mkdir(parents=True, exist_ok=True)
            picture = np.zeros((64, 64, 3), np.uint8)
            picture[..., 2], picture[..., 1] = 255, (hash(r["key"]) % 200)
            cv2.imwrite(str(path), picture)


# ---------------------------------------------------------------------------------------- parquet

def test_parquet_has_the_csv_columns_with_types(tmp_path):
    records = _records(40)
    path = write_parquet(tmp_path / "results.parquet", records)
    table = pq.read_table(path)
    assert table.column_names == list(CSV_COLUMNS) and table.num_rows == 40
    types = {f.name: f.type for f in table.schema}
    assert types["target"] == pa.int64() and types["n_evals"] == pa.int64()
    assert types["deletion_auc"] == pa.float64() and types["probability"] == pa.float64()
    assert types["pointing_box"] == pa.bool_() and types["label"] == pa.string()
    assert pa.types.is_list(types["top_k"]) and pa.types.is_struct(types["top_k"].value_type)
    rows = table.to_pylist()
    first = records[0]
    assert rows[0]["deletion_auc"] == first["metrics"]["deletion_auc"] and rows[0]["target"] == first["target"]
    assert rows[0]["top_k"][0] == {"index": first["target"], "label": first["label"],
                                   "probability": first["probability"]}
    assert json.loads(rows[0]["params"]) == first["params"] and rows[0]["overlay"] == first["files"]["overlay"]
    assert rows[0]["pointing_box"] is False and rows[1]["pointing_box"] is None  # missing is null, not False
    failed = rows[5]
    assert failed["status"] == "failed" and failed["error"] == f"cannot decode {EVIL}"  # real text, as in JSON
    assert failed["target"] is None and failed["deletion_auc"] is None and failed["top_k"] is None
    try:
        import pandas  # noqa: F401
    except ImportError:
        return
    frame = pq.read_table(path).to_pandas()
    assert len(frame) == 40 and frame["deletion_auc"].dtype == np.float64


def test_parquet_write_is_atomic(tmp_path, monkeypatch):
    path = write_parquet(tmp_path / "results.parquet", _records(3))
    before = path.read_bytes()

    def broken(table, stream, **kwargs):
        stream.write(b"PAR1 half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq, "write_table", broken)
    with pytest.raises(Exception, match="No space left"):
        write_parquet(path, _records(5))
    assert path.read_bytes() == before  # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["results.parquet"]  # and no temporary is left


def test_table_of_odd_values_does_not_fail():
    table = results_table([{"image": 1, "status": "ok", "target": "7", "metrics": {"deletion_auc": float("nan"),
                                                                                   "pointing_mask": None},
                            "top": "not a list", "params": {"a": np.float32(1.5)}}, {}])
    rows = table.to_pylist()
    assert rows[0]["image"] == "1" and rows[0]["target"] == 7 and rows[0]["deletion_auc"] is None
    assert rows[0]["top_k"] is None and rows[1]["status"] is None


def test_report_run_writes_parquet_matching_csv(tmp_path):
    out = tmp_path / "out"
    samples = MODELS / "samples"
    assert main(["report", str(MODELS / "shapes.onnx"), str(samples / "star.png"), str(samples / "square.png"),
                 "--methods", "occlusion", "--metrics", "deletion,insertion", "--step", "128",
                 "--out", str(out)]) == 0
    table = pq.read_table(out / "results.parquet")
    rows = list(csv.DictReader(io.StringIO((out / "results.csv").read_text())))
    assert table.num_rows == len(rows) == 2
    for row, typed in zip(rows, table.to_pylist()):
        assert typed["image"] == row["image"] and typed["target"] == int(row["target"])
        assert typed["deletion_auc"] == pytest.approx(float(row["deletion_auc"]))
        assert typed["n_evals"] == int(row["n_evals"]) and typed["overlay"] == row["overlay"]
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


# ------------------------------------------------------------------------------------------ the page

@pytest.fixture(scope="module")
def big_page(tmp_path_factory):
    out = tmp_path_factory.mktemp("scale") / "out"
    out.mkdir()
    records = _records(N)
    _overlays(out, records, 60)  # the first pages' overlays exist; the others are "missing" (no model run)
    methods = {"occlusion": {"items": N, "ok": sum(r["status"] == "ok" for r in records)}}
    page = render(out, run=RUN, methods=methods, records=records,
                  sections=['<h2 id="findings">Findings</h2><p>a section fragment</p>'])
    (out / "index.html").write_text(page, encoding="utf-8")
    return out, records


def test_page_weight_for_10000_records(big_page):
    out, records = big_page
    page = (out / "index.html").read_text()
    size = (out / "index.html").stat().st_size
    data = (out / DATA_FILE).stat().st_size
    print(f"\nindex.html {size} bytes, {DATA_FILE} {data} bytes for {len(records)} records")
    assert size < 2_000_000
    assert "data:image" not in page  # thumbnails are files now, not inlined
    assert EVIL not in page and EVIL not in (out / DATA_FILE).read_text()
    # the summary comes first, then the section fragments, then the grid
    assert page.index("Methods (means over images)") < page.index('id="findings"') < page.index('id="grid"')
    thumbs = sorted((out / "thumbs").rglob("*.jpg"))
    assert 50 <= len(thumbs) <= 60 and all(cv2.imread(str(p)) is not None for p in thumbs)
    script = (out / DATA_FILE).read_text()
    payload = json.loads(script[len("window.__blackbox="):-2])
    assert len(payload["images"]) == N and len(payload["records"]) == N
    assert payload["records"][0]["th"].startswith("thumbs/") and "th" not in payload["records"][100]


def test_pictures_are_reused_on_a_second_render(big_page, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    records = _records(6)
    _overlays(out, records, 6)
    for r in records:
        r["curves"] = {"deletion": {"auc": 0.4, "fractions": [0, 0.5, 1], "scores": [1, 0.5, 0.1],
                                    "score": "probability"}}
    render(out, run=RUN, methods={"occlusion": {}}, records=records)
    files = lambda: {p: p.stat().st_mtime_ns for p in (out / "thumbs").rglob("*") if p.is_file()}
    first = files()
    assert len([p for p in first if p.suffix == ".png"]) == len(first) // 2 == 5  # record 5 failed
    render(out, run=RUN, methods={"occlusion": {}}, records=records)
    assert files() == first
    cv2.imwrite(str(out / records[0]["files"]["overlay"]), np.zeros((8, 8, 3), np.uint8))  # a redone item
    records[0]["curves"]["deletion"]["auc"] = 0.3
    render(out, run=RUN, methods={"occlusion": {}}, records=records)
    now = set(files())
    assert len(now) == 10 and len(now - set(first)) == 2  # its two pictures replaced, none left behind


def test_10000_record_page_loads_its_first_page_in_chromium(big_page):
    out, _ = big_page
    result = _chromium("--window-size=1400,9000", "--dump-dom", (out / "index.html").as_uri(), timeout=180)
    dom = result.stdout
    tag = re.search(r"<body[^>]*>", dom)
    assert tag, result.stderr[-2000:]
    tag = tag.group(0)
    assert 'data-ready="1"' in tag, tag
    grid = dom[dom.index('id="grid"'):]
    grid = grid[:grid.index("</table>")]
    assert len(re.findall(r'<tr data-image="\d+"><td class="info">', grid)) == 24  # one page, not 10,000 rows
    thumbs = re.findall(r'<img alt="occlusion overlay"[^>]*src="(thumbs/[^"]+\.jpg)"', grid)
    assert len(thumbs) == 23 and "failed: cannot decode &lt;script&gt;" in grid  # record 5 failed
    loaded = int(re.search(r'data-images-loaded="(\d+)"', tag).group(1))
    total = int(re.search(r'data-images-total="(\d+)"', tag).group(1))
    assert total == 23 and loaded == total, tag  # the thumbnail files loaded under the page's CSP
    assert "of 10000" in dom and "10000 image(s)" in dom
    items = dom[dom.index('id="items"'):]
    assert items[:items.index("</table>")].count("<tr>") == 1 + 100  # head + one page of the metrics table
    assert "data-pwned" not in tag and "&lt;script&gt;alert(1)&lt;/script&gt;" in dom  # shown as text


def test_chromium_is_present():
    assert CHROMIUM is not None


def test_filters_and_sorting_in_chromium(big_page):
    """The page's own controls, driven by a test script added to a copy of the page (its hash added to the
    copy's CSP): predicted class 'class 2', sorted by deletion AUC ascending, then a metric range."""
    import base64
    import hashlib

    out, records = big_page
    driver = ("(function(){function set(id,v){var e=document.getElementById(id);e.value=v;"
              "e.dispatchEvent(new Event(e.tagName==='INPUT'?'input':'change'));}"
              "var s=document.getElementById('f-sort'),k='';for(var i=0;i<s.options.length;i++){"
              "if(s.options[i].text.indexOf('deletion_auc')===0)k=s.options[i].value;}"
              "set('f-class','class 2');set('f-sort',k);set('f-order','asc');"
              "document.body.setAttribute('data-driven','1');})();")
    digest = base64.b64encode(hashlib.sha256(driver.encode()).digest()).decode()
    page = (out / "index.html").read_text()
    csp = "script-src &#x27;self&#x27;"  # attribute-escaped in the page
    assert csp in page
    page = page.replace(csp, f"{csp} &#x27;sha256-{digest}&#x27;", 1)
    page = page.replace("</body>", f"<script>{driver}</script></body>", 1)
    copy = out / "driven.html"
    copy.write_text(page)
    dom = _chromium("--window-size=1400,3000", "--dump-dom", copy.as_uri(), timeout=180).stdout
    assert 'data-driven="1"' in dom
    grid = dom[dom.index('id="grid"'):]
    grid = grid[:grid.index("</table>")]
    names = re.findall(r'<td class="info"><div><b>(img\d+\.jpg)</b>', grid)
    expected = sorted((r for r in records if r["status"] == "ok" and r["top"][0]["label"] == "class 2"),
                      key=lambda r: r["metrics"]["deletion_auc"])
    assert names == [Path(r["image"]).name for r in expected[:24]]
    assert re.search(rf"{len(expected)} image\(s\) of {N}", dom)

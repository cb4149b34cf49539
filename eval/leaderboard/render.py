"""The static leaderboard: one folder that opens from disk (file://) with no server and no network.

``render(data, out)`` writes the page (``site/``: index.html, app.js, style.css), Plotly.js from
the installed ``plotly`` package, the data as ``data.js`` and a copy of every sample's media.
The data is a script (``window.LEADERBOARD = ...;``), not a JSON file to fetch: Chromium refuses
fetch() of file:// URLs. Media paths in the emitted data are relative to ``out`` so the folder
can be moved or served as it is.
"""

from __future__ import annotations

import copy
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

from training.fsio import atomic_file, atomic_write_text

SITE = Path(__file__).resolve().parent / "site"
ASSETS = ("index.html", "app.js", "style.css")
DATA_PREFIX = "window.LEADERBOARD = "
DATA_SUFFIX = ";\n"

# Characters that stay readable in a folder name and need no escaping in a relative URL
# ("#", "?", "%" and spaces would have to be percent-encoded in every src attribute).
_UNSAFE = re.compile(r"[^A-Za-z0-9._@+=-]")


def plotly_js() -> Path:
    """plotly.min.js as shipped inside the Python package (no CDN, no download)."""
    import plotly
    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def render(data: dict[str, Any], out: Path) -> Path:
    """Write the leaderboard for ``data`` (see the module doc) into ``out``; returns its index.html.

    Rendering again into the same folder is cheap: media and plotly.min.js already there with
    the same size are not copied again. ``data`` itself is not modified.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ASSETS:
        _copy_if_changed(SITE / name, out / name)
    _copy(plotly_js(), out / "vendor" / "plotly.min.js")
    emitted = _finite(copy.deepcopy(data))
    for run in emitted.get("runs") or []:
        for sample in run.get("samples") or []:
            _place_media(sample, str(run.get("id", "run")), out)
    atomic_write_text(out / "data.js", data_js(emitted))
    return out / "index.html"


def data_js(data: dict[str, Any]) -> str:
    """``window.LEADERBOARD = <json>;`` with every ``</`` written as ``<\\/`` (the same string to a
    JSON or JS parser), so a prompt holding ``</script>`` cannot end a script if this is ever inlined."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, sort_keys=False)
    # U+2028/9 are valid in JSON strings but ended JS string literals before ES2019.
    text = text.replace("</", "<\\/").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return DATA_PREFIX + text + DATA_SUFFIX


def _finite(obj: Any) -> Any:
    """NaN/inf -> None: JSON has no spelling for them and the page shows None as "–"."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def _safe_name(name: str) -> str:
    cleaned = _UNSAFE.sub("_", name)
    return "_" if cleaned in ("", ".", "..") else cleaned


def _place_media(sample: dict[str, Any], run_id: str, out: Path) -> None:
    """Copy one sample's media to media/<run>/<variant>/<file> and point the sample at it; a
    missing file is reported on the sample ("missing": original path), never raised: one lost
    video must not take down the whole leaderboard."""
    original = sample.get("media")
    src = Path(original) if original else None
    if src is None or not src.is_file():
        sample["media"], sample["missing"] = None, original
        return
    rel = Path("media", _safe_name(run_id), _safe_name(str(sample.get("variant", "unknown"))),
               _safe_name(src.name))
    _copy(src, out / rel)
    sample["media"] = rel.as_posix()


def _copy(src: Path, dst: Path) -> None:
    """Copy unless ``dst`` already has the same size (media never change once written; comparing
    bytes of every video on each nightly render would cost more than the copy)."""
    if dst.is_file() and dst.stat().st_size == src.stat().st_size:
        return
    _atomic_copy(src, dst)


def _copy_if_changed(src: Path, dst: Path) -> None:
    """Copy the small page files unless identical: an edited app.js can keep its size."""
    if dst.is_file() and dst.read_bytes() == src.read_bytes():
        return
    _atomic_copy(src, dst)


def _atomic_copy(src: Path, dst: Path) -> None:
    # No fsync: the folder is derived and a crash is repaired by rendering again; the rename
    # alone keeps a reader (or a browser reloading) from seeing half a file.
    with src.open("rb") as fin, atomic_file(dst, fsync=False) as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)

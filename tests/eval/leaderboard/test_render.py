"""The static leaderboard: the folder render() writes (fast, no browser) and the page itself in a
real headless Chromium opened from disk (browser tier), the way a person opens it."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import unquote, urlparse

import pytest

from eval.leaderboard.render import DATA_PREFIX, DATA_SUFFIX, render

from .conftest import FINAL, RUN_IDS, VARIANTS

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
OUR_FILES = ("index.html", "app.js", "style.css")


def read_data(out: Path) -> dict[str, Any]:
    text = (out / "data.js").read_text()
    assert text.startswith(DATA_PREFIX) and text.endswith(DATA_SUFFIX)
    return json.loads(text[len(DATA_PREFIX):-len(DATA_SUFFIX)])


@pytest.fixture(scope="module")
def board(leaderboard_data, tmp_path_factory) -> Path:
    """One rendered folder shared by the read-only checks (rendering copies plotly.min.js, 4.6 MB)."""
    out = tmp_path_factory.mktemp("board")
    render(leaderboard_data, out)
    return out


# ------------------------------------------------------------------ the folder (no browser)


def test_render_writes_a_self_contained_folder(board, leaderboard_data):
    for name in (*OUR_FILES, "data.js", "vendor/plotly.min.js"):
        assert (board / name).is_file(), name
    assert (board / "vendor" / "plotly.min.js").stat().st_size > 1_000_000
    data = read_data(board)
    assert [r["id"] for r in data["runs"]] == list(RUN_IDS)
    assert data["directions"] == leaderboard_data["directions"]
    # the caller's data is not rewritten in place
    assert all(Path(s["media"]).is_absolute() for r in leaderboard_data["runs"] for s in r["samples"])


def test_media_is_copied_and_referenced_relatively(board, leaderboard_data):
    data = read_data(board)
    for run, original in zip(data["runs"], leaderboard_data["runs"]):
        for sample, source in zip(run["samples"], original["samples"]):
            rel = sample["media"]
            assert rel == f"media/{run['id']}/{sample['variant']}/{Path(source['media']).name}"
            assert (board / rel).read_bytes() == Path(source["media"]).read_bytes()
            assert "missing" not in sample


def test_missing_media_is_reported_not_raised(leaderboard_data, tmp_path):
    data = copy.deepcopy(leaderboard_data)
    gone = str(tmp_path / "deleted" / "p000-s7.mp4")
    data["runs"][0]["samples"][0]["media"] = gone
    render(data, tmp_path / "out")
    sample = read_data(tmp_path / "out")["runs"][0]["samples"][0]
    assert sample["media"] is None and sample["missing"] == gone


def test_script_end_in_a_prompt_is_escaped(board, leaderboard_data):
    text = (board / "data.js").read_text()
    assert "</" not in text
    prompts = {s["prompt"] for s in read_data(board)["runs"][0]["samples"]}
    assert prompts == {s["prompt"] for s in leaderboard_data["runs"][0]["samples"]}
    assert any("</script>" in p for p in prompts)


def test_non_finite_numbers_become_null(leaderboard_data, tmp_path):
    data = copy.deepcopy(leaderboard_data)
    data["runs"][0]["perf"]["samples_per_s"] = float("nan")
    data["runs"][0]["variants"][0]["metrics"]["fvd"]["value"] = float("inf")
    render(data, tmp_path)
    run = read_data(tmp_path)["runs"][0]
    assert run["perf"]["samples_per_s"] is None and run["variants"][0]["metrics"]["fvd"]["value"] is None


def test_our_page_files_name_no_network_url(board):
    for name in OUR_FILES:
        text = (board / name).read_text()
        assert not re.search(r"https?://", text), name
        assert not re.search(r"[\"'(]\s*//", text), f"protocol-relative URL in {name}"


def test_render_again_is_idempotent(leaderboard_data, tmp_path):
    out = tmp_path / "board"
    render(leaderboard_data, out)
    files = sorted(p for p in out.rglob("*") if p.is_file())
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}
    assert render(leaderboard_data, out) == out / "index.html"
    assert sorted(p for p in out.rglob("*") if p.is_file()) == files  # no stray temporary files
    for p, (content, mtime) in before.items():
        assert p.read_bytes() == content
        if p.name != "data.js":
            assert p.stat().st_mtime_ns == mtime, f"{p} was copied again"


def test_empty_and_sparse_data_render(tmp_path):
    render({"generated": "x", "runs": [], "directions": {}}, tmp_path / "empty")
    assert read_data(tmp_path / "empty")["runs"] == []


# ------------------------------------------------------------------ the page in Chromium


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    """One headless Chromium for the whole module: starting one costs seconds."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.skip(f"the browser tests need Debian's chromium and chromium-driver ({', '.join(missing)} "
                    "missing; .ci/run installs them with apt)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--allow-file-access-from-files", "--window-size=1400,1000", "--mute-audio"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    drv.set_window_size(1400, 1000)
    yield drv
    drv.quit()


def open_page(driver, out: Path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get((out / "index.html").as_uri())
    # Plotly draws asynchronously: wait until every plot has its svg (none are drawn with no run).
    WebDriverWait(driver, 20).until(lambda d: d.execute_script(
        "return document.readyState === 'complete' && (document.getElementById('selected-run').hidden ||"
        " [...document.querySelectorAll('.plot')].every(p => p.querySelector('svg.main-svg')))"))


def assert_no_errors(driver) -> None:
    """No uncaught error (the page's own window.onerror collector) and nothing SEVERE in the console."""
    assert driver.execute_script("return window.__errors") == []
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe


def row_ids(driver) -> list[str]:
    from selenium.webdriver.common.by import By
    return [r.get_attribute("data-run-id") for r in driver.find_elements(By.CSS_SELECTOR, "#runs tr.run-row")]


def header(driver, key: str):
    from selenium.webdriver.common.by import By
    return driver.find_element(By.CSS_SELECTOR, f'#runs th[data-key="{key}"]')


@pytest.mark.browser
def test_page_opens_from_disk_without_errors(driver, board, tmp_path):
    open_page(driver, board)
    assert row_ids(driver) == list(RUN_IDS)
    newest = driver.find_element("css selector", "tr.run-row.selected")
    assert newest.get_attribute("data-run-id") == RUN_IDS[0]
    assert "regressed" in newest.get_attribute("class") and "regressed" in newest.text
    # the injection attempt in a prompt is shown as text
    assert "</script><script>" in driver.find_element("id", "grid").text
    assert "n.s." in driver.find_element("id", "deltas").text
    assert "rose" in driver.find_element("id", "history").text  # the newest run's alert
    prov = driver.find_element("id", "provenance")
    assert "c0ffee" in prov.text and "torch" in prov.text and prov.find_element("css selector", "details pre")
    assert_no_errors(driver)

    driver.set_window_size(1400, 1000)
    shot = tmp_path / "leaderboard.png"
    driver.save_screenshot(str(shot))
    assert shot.is_file() and shot.stat().st_size > 10_000
    if os.environ.get("LORABENCH_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["LORABENCH_SCREENSHOT"])


@pytest.mark.browser
def test_headers_sort_and_filter_hides_rows(driver, board):
    open_page(driver, board)
    header(driver, "id").click()
    assert row_ids(driver) == sorted(RUN_IDS)
    header(driver, "id").click()
    assert row_ids(driver) == sorted(RUN_IDS, reverse=True)
    # numbers sort as numbers (clip_score of the final checkpoint: 0.28, 0.25, 0.30) ...
    header(driver, "m:clip_score").click()
    assert row_ids(driver) == [RUN_IDS[1], RUN_IDS[0], RUN_IDS[2]]
    # ... and a missing value (the middle run's samples/s) stays last in both directions
    header(driver, "samples_per_s").click()
    assert row_ids(driver) == [RUN_IDS[0], RUN_IDS[2], RUN_IDS[1]]
    header(driver, "samples_per_s").click()
    assert row_ids(driver) == [RUN_IDS[2], RUN_IDS[0], RUN_IDS[1]]

    box = driver.find_element("id", "filter")
    box.send_keys("regressed")
    assert row_ids(driver) == [RUN_IDS[0]]
    box.clear()
    box.send_keys("20261201")
    assert row_ids(driver) == [RUN_IDS[1]]
    assert_no_errors(driver)


@pytest.mark.browser
def test_grid_shows_base_and_lora_side_by_side_and_the_toggle_swaps(driver, board):
    from selenium.webdriver.support.ui import Select

    open_page(driver, board)
    run = RUN_IDS[0]

    def cells(cls: str) -> list[tuple[str, str, str, str, str]]:
        # (variant, sample id, prompt id, seed, media src) of each row's cell of one column, in row order
        return [tuple(x) for x in driver.execute_script(
            "return Array.from(document.querySelectorAll('#grid td.' + arguments[0])).map(c => [c.dataset.variant,"
            " c.dataset.sampleId, c.dataset.promptId, c.dataset.seed, c.querySelector('video, img').getAttribute('src')])",
            cls)]

    def files(variant: str) -> list[tuple[str, str, str, str, str]]:
        return [(variant, f"{pid}-s7", pid, "7", f"media/{run}/{variant}/{name}")
                for pid, name in (("p000", "p000-s7.mp4"), ("p001", "p001-s7.png"))]

    # every row: base and the final LoRA checkpoint of the same sample id side by side
    row_samples = driver.execute_script(
        "return Array.from(document.querySelectorAll('#grid tbody tr')).map(r => r.dataset.sampleId)")
    assert row_samples == ["p000-s7", "p001-s7"]
    assert cells("grid-base") == files("base")
    assert cells("grid-lora") == files(FINAL)
    # the toggled column starts at the base and its button says so; it flips to the LoRA and back
    toggle = driver.find_element("id", "lora-toggle")
    assert cells("grid-cell") == files("base")
    assert "without LoRA" in toggle.text and toggle.get_attribute("aria-pressed") == "false"
    toggle.click()
    assert cells("grid-cell") == files(FINAL)
    assert "with LoRA" in toggle.text and "without" not in toggle.text
    assert toggle.get_attribute("aria-pressed") == "true"
    assert cells("grid-base") == files("base") and cells("grid-lora") == files(FINAL)  # side by side unchanged
    toggle.click()
    assert cells("grid-cell") == files("base") and "without LoRA" in toggle.text
    # another checkpoint from the select: the LoRA column follows it, then the toggled column too
    Select(driver.find_element("id", "variant-select")).select_by_value(VARIANTS[1])
    assert cells("grid-base") == files("base")
    assert cells("grid-lora") == files(VARIANTS[1])
    assert cells("grid-cell") == files("base")
    toggle.click()
    assert cells("grid-cell") == files(VARIANTS[1])
    assert VARIANTS[1] in driver.find_element("css selector", "#grid thead").text
    assert driver.find_element("css selector", "#grid .grid-cell video").get_attribute("preload") == "metadata"
    assert_no_errors(driver)


@pytest.mark.browser
def test_plots_render_with_data_and_follow_the_selected_run(driver, board):
    open_page(driver, board)

    def plots() -> dict[str, list[int]]:
        # id -> number of points of each trace; only Plotly-drawn plots (svg.main-svg) count
        return driver.execute_script("""
            const ids = [...document.querySelectorAll('#metric-plots .plot, #history .plot')].map(p => p.id);
            const out = {};
            for (const id of ['loss-plot', ...ids]) {
              const gd = document.getElementById(id);
              out[id] = gd.querySelector('svg.main-svg') && gd.data ? gd.data.map(t => (t.x || []).length) : null;
            }
            return out;""")

    found = plots()
    assert {"metric-plot-0", "metric-plot-1", "history-plot-0", "history-plot-1", "history-plot-2"} <= set(found)
    for plot_id, lengths in found.items():
        assert lengths and any(n > 0 for n in lengths), (plot_id, lengths)
    # history: one point per run of the bench, the regressed one red
    colours = driver.execute_script("return document.getElementById('history-plot-0').data[0].marker.color")
    assert len(colours) == 3 and colours[-1] != colours[0]
    assert driver.execute_script("return document.getElementById('metric-plot-0').dataset.metric") == "clip_score"

    driver.find_element("css selector", f'tr.run-row[data-run-id="{RUN_IDS[2]}"]').click()
    assert driver.find_element("css selector", "tr.run-row.selected").get_attribute("data-run-id") == RUN_IDS[2]
    assert RUN_IDS[2] in driver.find_element("id", "detail-title").text
    assert all(lengths for lengths in plots().values())
    assert_no_errors(driver)


@pytest.mark.browser
def test_every_link_resolves(driver, board):
    open_page(driver, board)
    refs = driver.execute_script("""
        const pick = (sel, attr) => [...document.querySelectorAll(sel)].map(e => e.getAttribute(attr));
        return [...pick('a[href]', 'href'), ...pick('img[src]', 'src'), ...pick('video[src]', 'src'),
                ...pick('source[src]', 'src'), ...pick('script[src]', 'src'), ...pick('link[href]', 'href')];""")
    assert len(refs) > 10
    for ref in refs:
        if ref.startswith("#"):
            assert driver.find_elements("id", ref[1:]), ref
            continue
        url = urlparse(ref)
        assert not url.scheme and not url.netloc, f"not a relative link: {ref}"
        assert (board / unquote(url.path)).is_file(), ref
    assert_no_errors(driver)


@pytest.mark.browser
def test_empty_single_and_sparse_runs(driver, leaderboard_data, tmp_path):
    from selenium.webdriver.common.by import By

    render({"generated": "now", "runs": [], "directions": {}}, tmp_path / "empty")
    open_page(driver, tmp_path / "empty")
    assert "no runs recorded yet" in driver.find_element(By.ID, "runs").text
    assert not driver.find_element(By.ID, "selected-run").is_displayed()
    assert_no_errors(driver)

    # one run, base only, null metrics, no loss, no perf, one media file gone
    run = copy.deepcopy(leaderboard_data["runs"][1])
    run["variants"] = [run["variants"][0]]
    run["variants"][0]["metrics"]["fvd"] = {"value": None, "lo": None, "hi": None, "n": 0}
    run["samples"] = [s for s in run["samples"] if s["variant"] == "base"]
    run["samples"][0]["media"] = str(tmp_path / "gone.mp4")
    run.update(loss=[], perf={}, alerts=[], git={"sha": None, "dirty": None})
    render({"generated": "now", "runs": [run], "directions": {}}, tmp_path / "one")
    open_page(driver, tmp_path / "one")
    assert row_ids(driver) == [run["id"]]
    assert "–" in driver.find_element(By.ID, "runs").text
    assert "missing" in driver.find_element(By.ID, "grid").text
    assert not driver.find_element(By.ID, "lora-toggle").is_enabled()
    # no LoRA variant: the base column alone, and the page says so
    assert len(driver.find_elements(By.CSS_SELECTOR, "#grid td.grid-base")) == 2
    assert not driver.find_elements(By.CSS_SELECTOR, "#grid .grid-lora, #grid .grid-cell")
    assert "no LoRA variant" in driver.find_element(By.ID, "grid-showing").text
    assert_no_errors(driver)

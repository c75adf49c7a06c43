"""The review page in a real browser: headless Chromium (selenium) against a real server on loopback
over the sample corpus, with a fake encoder that plants its near-duplicate groups (tests/review_serve.py).

Chromium and its driver are installed with apt-get where absent (as root); the tests skip, saying why,
only when that fails. Each test leaves a screenshot in tests/output/review/ (the last run's).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bellm_search.collection.core import Collection
from bellm_search.dedup.job import run_dedup as run_dedup_job
from review_serve import planted_encoder, planted_groups, sample_posts
from test_server import running

HERE = Path(__file__).parent
SHOTS = HERE / "output" / "review"
KEY = "review-page-test-key-0123"
THRESHOLD = "0.9"  # planted near copies sit at cosine >= 0.92 (paraphrases), random pairs far below


# ----------------------------------------------------------------------------- browser and server
def _browser_binaries() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or ("/usr/lib/chromium/chromedriver" if Path("/usr/lib/chromium/chromedriver").exists() else None)
    return (browser, driver) if browser and driver else None


def _install_chromium() -> str:
    """apt-get install chromium + driver; '' on success, else why not."""
    if os.geteuid() != 0:
        return "not root, so apt-get cannot install them"
    try:
        for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "chromium", "chromium-driver"]):
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                                 env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
            if res.returncode != 0:
                return f"`{' '.join(cmd)}` failed: {(res.stderr or res.stdout).strip()[-300:]}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"apt-get failed: {exc}"
    return ""


@pytest.fixture(scope="session")
def chromium() -> tuple[str, str]:
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[test]')")
    found = _browser_binaries()
    if found is None:
        why = _install_chromium()
        found = _browser_binaries()
        if found is None:
            pytest.skip(f"browser tests need chromium and chromedriver: {why or 'not found after installing'}")
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)
    return found


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> tuple[str, Path]:
    root = tmp_path_factory.mktemp("review")
    path = root / "coll"
    with Collection.create(path, encoder=planted_encoder(), normalize_social=True) as coll:
        coll.ingest(sample_posts())
        run_dedup_job(coll, float(THRESHOLD), output=path / "dedup_clusters.jsonl")  # a `dedup --output` file
    cmd = [sys.executable, str(HERE / "review_serve.py"), str(path), json.dumps({"port": 0, "api_key": KEY})]
    with running(cmd, root / "server.log") as url:
        yield url, path


@pytest.fixture
def browser(chromium, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,1000"):
        options.add_argument(arg)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromium[1]))
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    yield driver
    driver.quit()


def shot(driver, name: str) -> None:
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(SHOTS / f"{name}.png"))


def wait(driver, condition, timeout: float = 30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def by_id(driver, name: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, name)


def all_css(driver, css: str) -> list:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, css)


def open_page(driver, url: str) -> None:
    """Load the page (no key needed for it), see the data refused, then give the key."""
    driver.get(url + "/")
    wait(driver, lambda d: "API key" in by_id(d, "status").text)
    by_id(driver, "api-key").send_keys(KEY)
    by_id(driver, "save-key").click()
    wait(driver, lambda d: "285 documents" in by_id(d, "collection").text)


def run_dedup(driver, threshold: str = THRESHOLD) -> None:
    by_id(driver, "tab-dedup").click()
    box = by_id(driver, "threshold")
    box.clear()
    box.send_keys(threshold)
    by_id(driver, "dedup-run").click()
    wait(driver, lambda d: "clusters" in by_id(d, "dedup-summary").text and all_css(d, "article.cluster"))


def shown_clusters(driver) -> list[dict]:
    """Every cluster on every page: member ids (kept first) and the kept one."""
    out, pages = [], 0
    while True:
        for box in all_css(driver, "article.cluster"):
            kept = [m.get_attribute("data-id") for m in box.find_elements("css selector", ".member.kept")]
            out.append({"members": box.get_attribute("data-members").split(), "kept": kept})
        info = by_id(driver, "page-info").text  # " 1–20 of 61 "
        last, total = info.split("–")[1].split(" of ")
        if int(last) >= int(total):
            return out
        before = all_css(driver, "article.cluster")[0]
        by_id(driver, "next").click()
        wait(driver, lambda d: all_css(d, "article.cluster") and all_css(d, "article.cluster")[0] != before)
        pages += 1
        assert pages < 50


def weakest_links(driver) -> list[float]:
    from selenium.common.exceptions import StaleElementReferenceException

    try:
        return [float(h.text.split("weakest link ")[1].split(" ")[0]) for h in all_css(driver, "article.cluster h3")]
    except StaleElementReferenceException:
        return [2.0]


# ----------------------------------------------------------------------------- tests
def test_search_finds_a_planted_document_with_a_filter(server, browser):
    url, _ = server
    open_page(browser, url)
    post = next(p for p in sample_posts() if p["id"] == "p0003")
    by_id(browser, "q").send_keys(post["text"])
    by_id(browser, "where").send_keys("topic=pets")
    by_id(browser, "search-go").click()
    wait(browser, lambda d: all_css(d, "#results li"))
    hits = all_css(browser, "#results li")
    shot(browser, "search")
    first = hits[0]
    assert first.find_element("css selector", ".id").text == "p0003"
    assert first.find_element("css selector", ".score").text == "1.000"
    assert all("topic=pets" in h.find_element("css selector", ".meta").text for h in hits)
    assert len(hits) == 10


def test_the_dedup_view_shows_every_planted_cluster_and_the_kept_member(server, browser):
    url, _ = server
    open_page(browser, url)
    run_dedup(browser)
    shot(browser, "clusters")
    shown = shown_clusters(browser)
    found = {frozenset(c["members"]) for c in shown}
    planted = {frozenset(g["ids"]) for g in planted_groups()}
    assert found == planted  # every planted group, exact and near, and nothing else
    for c in shown:  # keep=first: the first-ingested (smallest) id, marked once, shown first
        assert c["kept"] == [min(c["members"])] and c["members"][0] == c["kept"][0]

    from selenium.webdriver.support.ui import Select

    Select(by_id(browser, "keep")).select_by_value("longest")
    Select(by_id(browser, "sort")).select_by_value("weakest")
    weakest = wait(browser, lambda d: weakest_links(d) if weakest_links(d)[0] < 0.95 else None)
    shot(browser, "clusters_longest_weakest")
    assert weakest == sorted(weakest)  # a paraphrase cluster first
    boxes = all_css(browser, "article.cluster")
    for box in boxes:
        texts = {m.get_attribute("data-id"): m.find_element("css selector", ".text").text
                 for m in box.find_elements("css selector", ".member")}
        kept = box.find_element("css selector", ".member.kept").get_attribute("data-id")
        assert len(texts[kept]) == max(len(t) for t in texts.values())


def test_a_dedup_output_file_in_the_collection_loads_into_the_dedup_view(server, browser):
    from selenium.webdriver.support.ui import Select

    url, _ = server
    open_page(browser, url)
    by_id(browser, "tab-dedup").click()
    wait(browser, lambda d: len(Select(by_id(d, "files")).options) > 1)
    assert [o.text for o in Select(by_id(browser, "files")).options][1:] == ["dedup_clusters.jsonl"]  # not labels.jsonl
    Select(by_id(browser, "files")).select_by_value("dedup_clusters.jsonl")
    by_id(browser, "load-file").click()
    wait(browser, lambda d: "file: dedup_clusters.jsonl" in by_id(d, "dedup-summary").text)
    shot(browser, "clusters_from_file")
    shown = shown_clusters(browser)
    assert {frozenset(c["members"]) for c in shown} == {frozenset(g["ids"]) for g in planted_groups()}


def test_export_downloads_the_remove_list(server, browser):
    url, _ = server
    open_page(browser, url)
    run_dedup(browser)
    by_id(browser, "export-remove").click()
    target = browser.downloads / "remove.txt"
    wait(browser, lambda d: target.is_file() and target.stat().st_size > 0)
    shot(browser, "export")
    removed = target.read_text().split()
    expected = sorted(i for g in planted_groups() for i in sorted(g["ids"])[1:])
    assert sorted(removed) == expected


def test_labelling_pairs_writes_the_labels_file_and_calibrates(server, browser):
    url, path = server
    truth = {frozenset((a, b)) for g in planted_groups() for a in g["ids"] for b in g["ids"] if a != b}
    open_page(browser, url)
    by_id(browser, "tab-label").click()
    by_id(browser, "label-threshold").send_keys("0.6")  # pure cosine: pairs from 0.5 up, both sides of 0.6
    answers = {}
    while len(answers) < 10:
        by_id(browser, "more-pairs").click()
        wait(browser, lambda d: all_css(d, "article.pair:not(.answered)"))
        for box in all_css(browser, "article.pair:not(.answered)"):
            pair = frozenset((box.get_attribute("data-a"), box.get_attribute("data-b")))
            duplicate = pair in truth
            box.find_element("css selector", f"button[data-answer='{str(duplicate).lower()}']").click()
            wait(browser, lambda d, b=box: "answered" in b.get_attribute("class"))
            answers[pair] = duplicate
            if len(answers) == 1:
                shot(browser, "label")
    wait(browser, lambda d: f"labels: {len(answers)} " in by_id(d, "label-count").text)
    lines = [json.loads(x) for x in (path / "labels.jsonl").read_text().splitlines()]
    assert {frozenset((x["a"], x["b"])): x["duplicate"] for x in lines} == answers
    assert all(x["by"] == "review-page" for x in lines)
    assert True in answers.values() and False in answers.values()
    by_id(browser, "calibrate").click()
    wait(browser, lambda d: "calibrated from" in by_id(d, "calibration").text or "error" in by_id(d, "status").get_attribute("class"))
    shot(browser, "calibrated")
    assert "calibrated from" in by_id(browser, "calibration").text, by_id(browser, "status").text
    assert (path / "calibration.json").is_file()
    run_dedup(browser, threshold="")  # now the collection's calibration: the pair model and its features
    shot(browser, "clusters_pair_model")
    assert "pair model, collection" in by_id(browser, "dedup-summary").text
    assert any("jaccard5" in t.text for t in all_css(browser, "table.pairs"))


def test_the_page_is_open_and_its_data_needs_the_api_key(server):
    import httpx

    url, _ = server
    with httpx.Client(base_url=url, timeout=30) as client:
        for path in ("/", "/review/app.js", "/review/style.css"):
            assert client.get(path).status_code == 200, path
        assert "<title>bellm-search review</title>" in client.get("/").text
        data = [("GET", "/review/files"), ("GET", "/review/clusters"), ("GET", "/review/export"), ("GET", "/review/pairs"),
                ("GET", "/review/labels"), ("POST", "/review/labels"), ("POST", "/review/dedup"), ("POST", "/review/calibrate"),
                ("POST", "/review/load"), ("GET", "/review/other.js")]
        for method, path in data:
            assert client.request(method, path).status_code == 401, path
        client.headers["X-API-Key"] = KEY
        assert client.get("/review/labels").status_code == 200
        assert client.get("/review/other.js").status_code == 404
        assert client.post("/review/load", json={"file": "../manifest.json"}).status_code == 400  # only files in the folder

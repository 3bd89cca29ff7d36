"""The HTML report, opened in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright).

A tiny workflow (the amsgrad optimizer experiment and the AB3 example flow experiment) makes a real
results folder; the page must load with no failed request and no request off the local disk, show
every experiment that ran (index and section, with its provenance block), and every image must
decode. A full-page screenshot is written and its path printed into the test log.
"""
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import REPO, copy_workflow

CHROMIUM = os.environ.get("FLOWREPRO_CHROMIUM", "/usr/bin/chromium")
# Root (CI) needs --no-sandbox; the rest keep Chromium from reaching out on its own.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
EXPERIMENTS = ["amsgrad", "ab3_solver"]


def _unavailable(reason: str):
    """Fail in CI (the test must run there), skip on a developer machine without a browser."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI installs it: see .ci/run)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    """A workflow copy run on amsgrad and the AB3 example (placed under config/experiments here)."""
    workflow = copy_workflow(tmp_path_factory.mktemp("browser") / "wf")
    for name in ("ab3_solver.yaml", "ab3.py"):
        shutil.copy2(REPO / "examples/ab3_solver" / name, workflow / "config/experiments" / name)
    (workflow / "browser.yaml").write_text(yaml.safe_dump({"scale": "tiny", "experiments": EXPERIMENTS}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(["snakemake", "--cores", "2", "--configfile", "browser.yaml"], cwd=workflow,
                         capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-4000:]
    return workflow / "results"


@pytest.mark.slow
def test_report_renders_in_headless_chromium(tiny_results, tmp_path, capsys):
    if not Path(CHROMIUM).exists():
        _unavailable(f"no Chromium at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[test]')")

    report = tiny_results / "report.html"
    markdown = (tiny_results / "report.md").read_text()
    assert markdown.count("### Provenance") == len(EXPERIMENTS)
    assert "config hash" in markdown

    failed, requests, errors = [], [], []
    shots = Path(os.environ.get("FLOWREPRO_SCREENSHOT_DIR", tmp_path))  # set it to keep the PNG past pytest's cleanup
    shots.mkdir(parents=True, exist_ok=True)
    screenshot = shots / "report.png"
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1200, "height": 900})
        try:
            page = context.new_page()
            context.on("request", lambda request: requests.append(request.url))
            context.on("requestfailed", lambda request: failed.append(f"{request.url}: {request.failure}"))
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(report.as_uri(), wait_until="load")
            page.wait_for_load_state("networkidle")

            assert page.title() == "flowrepro results"
            for name in EXPERIMENTS:
                assert page.locator(f"#index a[href='#{name}']").count() == 1, f"{name} missing from the index"
                section = page.locator(f"h2#{name}")
                assert section.count() == 1 and section.is_visible(), f"{name} has no section"
            index_text = page.locator("#index").inner_text()
            assert "pass" in index_text and "fail" in index_text
            provenance = page.locator("dl.prov")
            assert provenance.count() == len(EXPERIMENTS)
            assert all("config hash" in text for text in provenance.all_inner_texts())

            images = page.eval_on_selector_all(
                "img", "els => els.map(e => ({src: e.getAttribute('src'), complete: e.complete, width: e.naturalWidth}))")
            assert images, "the report shows no figures"
            broken = [image["src"] for image in images if not image["complete"] or image["width"] <= 0]
            assert not broken, f"images that did not decode: {broken}"
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            context.close()

    assert not failed, f"failed requests: {failed}"
    assert not errors, f"page errors: {errors}"
    off_disk = [url for url in requests if not url.startswith("file://")]
    assert not off_disk, f"the report fetched something from the network: {off_disk}"
    assert len(requests) == 1 + len(images)  # the page and its figures, nothing else
    assert screenshot.stat().st_size > 10_000
    with capsys.disabled():
        print(f"\nreport screenshot: {screenshot} ({len(images)} figures, {len(EXPERIMENTS)} experiments)")


def test_provenance_is_written_beside_the_metrics_and_described(tmp_path):
    from flowrepro import provenance

    metrics = tmp_path / "results/demo/metrics.csv"
    path = provenance.write_for(metrics, REPO / "config/experiments/amsgrad.yaml", REPO / "config/scales/tiny.yaml",
                                device="cpu", features="fid_classifier: penultimate layer of the digits CNN")
    assert path == tmp_path / "results/demo/provenance.json"
    record = provenance.read_for(metrics)
    assert len(record["config_hash"]) == 12 and record["device"] == "cpu"
    assert {"python", "torch", "diffusers", "POT", "torchdiffeq", "pytorch_optimizer", "torchmetrics", "snakemake",
            "flowrepro"} <= set(record["versions"])
    assert record["git"] == "unknown" or set(record["git"]) == {"commit", "dirty"}
    import socket

    host = socket.gethostname()
    assert len(host) < 4 or host not in path.read_text()  # hostname-free
    lines = dict(provenance.describe(record))
    assert lines["config hash"].startswith(record["config_hash"]) and "digits CNN" in lines["FID features"]
    assert provenance.read_for(tmp_path / "elsewhere/metrics.csv") is None
    assert provenance.describe(None) == [("provenance", "not recorded")]

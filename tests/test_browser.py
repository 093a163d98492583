"""The real app in a real browser: `streamlit run app.py` on a loopback port, driven by headless Chromium.

Screenshots land in tests/artifacts/. Skipped (with the reason) only where Chromium or Playwright is
missing; .ci/run installs both, so CI always runs these.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PROJECT, ms, serve

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = PROJECT / "tests" / "artifacts"

playwright_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def server(finished_runs: Path, cifar_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from serve(finished_runs, cifar_dir, tmp_path_factory.mktemp("streamlit"))


@pytest.fixture(scope="module")
def study_server(methods_study: tuple[Path, Path], cifar_dir: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from serve(methods_study[0], cifar_dir, tmp_path_factory.mktemp("streamlit-study"))


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        yield b
        b.close()


@pytest.fixture(autouse=True)
def close_pages(browser) -> Iterator[None]:
    """Each test's tabs close after it: an open Train or Studies tab re-runs its live fragment every 2 s on the
    server, and tabs left open by earlier tests would keep both CPU cores busy for the rest of the module."""
    yield
    for context in browser.contexts:
        context.close()


def open_page(browser, url: str, path: str, text: str):
    page = browser.new_page(viewport={"width": 1600, "height": 1100})
    page.goto(url + path)
    page.get_by_text(text).first.wait_for(timeout=60_000)
    return page


def settle(page, seconds: float = 1.0) -> None:
    """Wait until Streamlit is idle (no 'Running...' status) for a moment."""
    page.wait_for_timeout(300)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=60_000)
    page.wait_for_timeout(seconds * 1000)


def assert_no_exception(page) -> None:
    boxes = page.locator('[data-testid="stException"]')
    assert boxes.count() == 0, boxes.first.inner_text()


def metric_values(page) -> list[str]:
    return page.locator('[data-testid="stMetricValue"]').all_inner_texts()


def test_explorer_slider_changes_the_numbers(browser, server):
    ARTIFACTS.mkdir(exist_ok=True)
    page = open_page(browser, server, "/explorer", "Compound scaling explorer")
    settle(page)
    assert_no_exception(page)
    page.screenshot(path=str(ARTIFACTS / "explorer-b0.png"), full_page=True)
    before = metric_values(page)
    slider = page.get_by_role("slider").first  # the Variant select-slider
    slider.focus()
    for _ in range(3):
        page.keyboard.press("ArrowRight")
    page.get_by_text("B3", exact=True).first.wait_for(timeout=30_000)
    settle(page)
    playwright_api.expect(page.locator('[data-testid="stMetricValue"]').filter(has_text="43 px")).to_have_count(
        1, timeout=30_000)
    after = metric_values(page)
    assert after != before and "43 px" in after, after
    assert_no_exception(page)
    page.screenshot(path=str(ARTIFACTS / "explorer-b3.png"), full_page=True)

    page.get_by_text("Custom φ, α, β, γ").click()
    page.get_by_text("φ (compound coefficient)").first.wait_for(timeout=30_000)
    settle(page)
    custom = metric_values(page)
    phi = page.get_by_role("slider").first  # φ
    phi.focus()
    for _ in range(10):
        page.keyboard.press("ArrowRight")
    page.wait_for_function("(before) => JSON.stringify([...document.querySelectorAll("
                           "'[data-testid=\"stMetricValue\"]')].map(e => e.innerText)) !== before",
                           arg=json.dumps(custom), timeout=30_000)
    settle(page, 1)
    assert metric_values(page) != custom
    assert_no_exception(page)
    page.screenshot(path=str(ARTIFACTS / "explorer-custom.png"), full_page=True)


@pytest.mark.parametrize("path, text, shot", [("/train", "New runs", "train"),
                                              ("/results", "Table 1, from your runs", "results")])
def test_pages_render_with_runs_present(browser, server, path, text, shot):
    ARTIFACTS.mkdir(exist_ok=True)
    page = open_page(browser, server, path, text)
    settle(page, 2)
    assert_no_exception(page)
    page.screenshot(path=str(ARTIFACTS / f"{shot}.png"), full_page=True)


def test_cam_page_shows_one_overlay_per_run_for_an_upload(browser, server, tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    import numpy as np
    from PIL import Image

    photo = tmp_path / "upload.png"
    yy, xx = np.mgrid[0:96, 0:128]
    picture = np.stack([xx * 2, yy * 2, np.full_like(xx, 90)], axis=-1).astype(np.uint8)
    picture[30:60, 70:100] = (230, 30, 30)  # a red square on a smooth background
    Image.fromarray(picture).save(photo)
    page = open_page(browser, server, "/cam", "Class activation maps")
    settle(page)
    page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(photo))
    page.get_by_text("upload.png").first.wait_for(timeout=60_000)
    settle(page, 2)
    assert_no_exception(page)
    # the colour bar, the original and two finished runs side by side (the last may still be drawing: wait)
    playwright_api.expect(page.locator('[data-testid="stImage"] img')).to_have_count(4, timeout=60_000)
    settle(page)
    assert_no_exception(page)
    page.screenshot(path=str(ARTIFACTS / "cam.png"), full_page=True)


def projector_page(browser, url: str, path: str, text: str):
    """A 1280x720 tab, as on a classroom projector."""
    page = browser.new_page(viewport={"width": 1280, "height": 720})
    page.goto(url + path)
    page.get_by_text(text).first.wait_for(timeout=60_000)
    settle(page, 1.5)
    return page


def test_a_deep_link_gets_the_app_not_a_list_of_files(browser, server):
    page = projector_page(browser, server, "/train", "New runs")
    nav = page.locator('[data-testid="stSidebarNav"]').inner_text()
    assert "widgets" not in nav and "Scaling explorer" in nav and "Class activation maps" in nav, nav
    assert_no_exception(page)
    page.screenshot(path=str(ARTIFACTS / "deep-link-train-1280.png"))


def clipped(page, selector: str) -> list[str]:
    """Texts of the matching elements that do not fit their box (cut off or ellipsised)."""
    return page.evaluate("""(sel) => [...document.querySelectorAll(sel)]
        .filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.innerText)""", selector)


def test_explorer_tiles_are_not_cut_off_at_1280(browser, server):
    page = projector_page(browser, server, "/explorer", "Compound scaling explorer")
    playwright_api.expect(page.locator('[data-testid="stMetricValue"]')).to_have_count(9, timeout=60_000)
    settle(page, 1)
    for selector in ('[data-testid="stMetricValue"] div', '[data-testid="stMetricLabel"] p'):
        assert clipped(page, selector) == [], selector
    page.screenshot(path=str(ARTIFACTS / "explorer-1280.png"))


def test_the_measure_spinner_promises_the_models_own_estimate(browser, server):
    """Classroom item 14: not "a few seconds" for every model, but the estimate for this spec and batch."""
    from effnet import ScalingSpec
    from effnet.training.measure import measure_estimate_s

    page = projector_page(browser, server, "/explorer", "Compound scaling explorer")
    page.get_by_role("tab", name="Speed on this machine").click()
    batch = page.get_by_label("Training batch to time")
    batch.fill("32")
    batch.press("Tab")
    settle(page, 0.5)
    page.get_by_role("button", name="Measure on this machine").click()
    # The server has or has not loaded the model code yet (other pages may have): either estimate is honest.
    estimates = {f"{measure_estimate_s(ScalingSpec.official('b0'), 32, cold=cold):.0f}" for cold in (False, True)}
    spinner = page.get_by_text("Timing on this machine: about")
    spinner.wait_for(timeout=30_000)
    assert spinner.inner_text().split("about ")[1].split(" s")[0] in estimates, spinner.inner_text()
    box = spinner.bounding_box()
    assert box and box["y"] + box["height"] <= 720, "the promise is on screen, where the eye is"
    page.screenshot(path=str(ARTIFACTS / "explorer-measuring-1280.png"))
    page.get_by_text("Inference, 1 image").first.wait_for(timeout=120_000)
    assert_no_exception(page)


def test_a_bad_value_is_explained_under_start_and_reset_clears_it(browser, server):
    page = projector_page(browser, server, "/train", "New runs")
    epochs = page.get_by_label("Epochs", exact=True)
    epochs.fill("0")
    epochs.press("Tab")
    page.get_by_test_id("stBaseButton-primaryFormSubmit").click()
    message = page.get_by_text("Not started: epochs: must be 1 to 1,000").first
    message.wait_for(timeout=30_000)
    start_box = page.get_by_test_id("stBaseButton-primaryFormSubmit").bounding_box()
    assert message.bounding_box()["y"] > start_box["y"], "the reason appears right under the Start button"
    page.screenshot(path=str(ARTIFACTS / "train-refused-1280.png"))
    page.get_by_role("button", name="Reset", exact=True).click()
    playwright_api.expect(page.get_by_label("Epochs", exact=True)).to_have_value("3", timeout=30_000)


def test_chart_text_is_readable_from_the_back_of_the_room(browser, server):
    page = projector_page(browser, server, "/results", "Table 1, from your runs")
    page.locator(".js-plotly-plot .xtick text").first.wait_for(timeout=60_000)
    sizes = page.evaluate("""() => [...document.querySelectorAll(
        '.js-plotly-plot .xtick text, .js-plotly-plot .ytick text, .js-plotly-plot .legendtext, '
        + '.js-plotly-plot .g-xtitle text, .js-plotly-plot .g-ytitle text')]
        .map(e => parseFloat(getComputedStyle(e).fontSize))""")
    assert sizes and min(sizes) >= 14, sorted(sizes)[:5]
    legends = page.evaluate("() => [...document.querySelectorAll('.js-plotly-plot .legendtext')].map(e => e.textContent)")
    assert not any(" a=" in t or " g=" in t for t in legends), legends


def test_reloading_the_train_page_keeps_the_form(browser, server):
    page = projector_page(browser, server, "/train", "New runs")
    page.get_by_role("button", name="Quick CPU demo").click()
    epochs = page.get_by_label("Epochs", exact=True)
    playwright_api.expect(page.get_by_label("Training images (0 = all)")).to_have_value("2000", timeout=30_000)
    epochs.fill("7")
    epochs.press("Tab")
    page.wait_for_function("() => location.search.includes('t_epochs=7')", timeout=30_000)
    page.reload()
    page.get_by_text("New runs").first.wait_for(timeout=60_000)
    playwright_api.expect(page.get_by_label("Epochs", exact=True)).to_have_value("7", timeout=30_000)
    playwright_api.expect(page.get_by_label("Training images (0 = all)")).to_have_value("2000", timeout=30_000)


def test_study_page_in_the_browser_shows_the_methods_side_by_side(browser, study_server):
    ARTIFACTS.mkdir(exist_ok=True)
    page = projector_page(browser, study_server, "/study", "What each method looks at")
    page.get_by_text("test #0").first.wait_for(timeout=90_000)
    settle(page, 2)
    assert_no_exception(page)
    assert page.locator(".js-plotly-plot").count() == 1
    captions = page.locator('[data-testid="stImageCaption"]').all_inner_texts()
    for method in ("compound", "depth only", "width only", "resolution only"):
        assert any(c.startswith(method) for c in captions), captions
    assert not clipped(page, '[data-testid="stMarkdownContainer"] h1')
    page.screenshot(path=str(ARTIFACTS / "study-1280.png"), full_page=True)


def test_a_zip_of_class_folders_is_added_from_the_train_page(browser, server, tmp_path):
    import io
    import zipfile

    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    archive = tmp_path / "letters.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i, (img, y) in enumerate(zip(digits.images[:60], digits.target[:60], strict=True)):
            buf = io.BytesIO()
            Image.fromarray((img * 16).astype(np.uint8)).save(buf, format="PNG")
            zf.writestr(f"mine/digit-{y}/{i}.png", buf.getvalue())
    page = projector_page(browser, server, "/train", "New runs")
    page.get_by_text("Your own images").first.click()
    page.locator('[data-testid="stFileUploader"] input[type="file"]').first.set_input_files(str(archive))
    page.get_by_text("letters.zip").first.wait_for(timeout=30_000)
    name = page.get_by_label("Name", exact=True)
    name.fill("browser-digits")
    name.press("Tab")
    page.get_by_role("button", name="Add", exact=True).click()
    message = page.get_by_text("Added browser-digits: 10 classes").first
    message.wait_for(timeout=60_000)
    assert_no_exception(page)
    page.screenshot(path=str(ARTIFACTS / "train-own-images-1280.png"))


@pytest.fixture(scope="module")
def own_server(finished_runs: Path, cifar_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server over a copy of the finished runs, for tests that add runs of their own."""
    root = tmp_path_factory.mktemp("own") / "checkpoints"
    shutil.copytree(finished_runs, root)
    yield from serve(root, cifar_dir, tmp_path_factory.mktemp("streamlit-own"))


def test_manage_a_run_follows_the_run_without_a_reload(browser, own_server):
    """Item 8 of the classroom issue: 'Manage a run' said 'queued' and 'No best.pt yet' after the run finished."""
    page = projector_page(browser, own_server, "/train", "New runs")
    page.get_by_role("button", name="Quick CPU demo").click()
    settle(page, 1)
    for label, value in (("φ", "-4"), ("Epochs", "1"), ("Training images (0 = all)", "96"),
                         ("Eval images (0 = all)", "32"), ("Validation held out", "32"), ("Batch size", "32")):
        field = page.get_by_label(label, exact=True)
        field.fill(value)
        field.press("Tab")
    page.get_by_test_id("stBaseButton-primaryFormSubmit").click()
    queued = page.get_by_text("Queued 1 run(s): ").first
    queued.wait_for(timeout=60_000)
    run_id = queued.inner_text().split(": ")[1].split(".")[0]
    manage = page.locator('[data-testid="stSelectbox"]').filter(has=page.get_by_text("Run", exact=True))
    manage.locator("input").click()
    page.keyboard.type(run_id[-12:])  # the selectbox filters its options as one types
    page.keyboard.press("Enter")
    settle(page, 1)
    page.get_by_role("link", name="Download best.pt").wait_for(timeout=ms(240))  # no reload: the view followed
    assert page.get_by_text("No best.pt yet").count() == 0
    assert_no_exception(page)
    page.screenshot(path=str(ARTIFACTS / "manage-follows-1280.png"))


# ----------------------------------------------------------------------------- a class server, in a browser
class Listener:
    """A local HTTP server that records every request: a page that renders a label as Markdown fetches from it."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.paths: list[str] = []
        seen = self.paths

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append(self.path)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory: pytest.TempPathFactory, cifar_dir: Path) -> Iterator[tuple[str, Path, Listener]]:
    """A server with a teacher password, whose runs and dataset carry names that are Markdown, images and links."""
    from fake_runs import fake_run, row
    from test_hostile_student import class_zip

    from effnet.base import files
    from effnet.data import folder

    listener = Listener()
    root = tmp_path_factory.mktemp("hostile") / "checkpoints"
    data = tmp_path_factory.mktemp("hostile-data")
    shutil.copytree(cifar_dir, data, dirs_exist_ok=True)
    image = f"![x]({listener.url}/label.png)"
    run_dir = fake_run(root, "r1", [row(1, 40.0, 41.0), row(2, 45.0, 44.0)], weights=True,
                       job={"owner": "a" * 32, "label": f"{image} **bold**"})
    files.write_json(run_dir / "confusion.json", {"classes": {"fine": [f"![c]({listener.url}/class.png)", "$x^2$"],
                                                              "coarse": ["(no superclasses)"], "fine_to_coarse": [0, 0]}})
    # A zip's folder names cannot hold "://" (refused as a path), but a relative image works as well to fetch.
    folder.unpack_zip(class_zip({"![t](track.png)": 3, "**b** $x^2$": 3}), data, "hostile")
    yield from ((url, root, listener) for url in serve(root, data, tmp_path_factory.mktemp("hostile-logs"),
                                                       EFFNET_TEACHER_PASSWORD="s3cret"))


def test_labels_and_class_names_are_shown_as_text_and_fetch_nothing(browser, hostile_server):
    url, _, listener = hostile_server
    fetched: list[str] = []
    for path, text in (("/train", "New runs"), ("/results", "Table 1, from your runs"), ("/cam", "Class activation"),
                       ("/study", "Carry runs between installs")):
        page = browser.new_page(viewport={"width": 1280, "height": 720})
        page.on("request", lambda request: fetched.append(request.url))
        page.goto(url + path)
        page.get_by_text(text).first.wait_for(timeout=ms(60))
        settle(page, 1.5)
        assert_no_exception(page)
        if path == "/train":
            page.get_by_text("Your own images").first.click()
            settle(page, 1)
            assert page.get_by_text("![t](").count() >= 1  # the folder name, as typed
        page.screenshot(path=str(ARTIFACTS / f"hostile{path.replace('/', '-')}.png"), full_page=True)
    assert listener.paths == [], listener.paths
    assert not [u for u in fetched if "track.png" in u or "label.png" in u or "class.png" in u], fetched
    # Nothing leaves the server's own address (the tab icon came from Google's font CDN; offline, an error a page).
    assert not [u for u in fetched if not u.startswith((url, "data:", "blob:"))], fetched


def test_no_owner_token_in_the_address_or_links_and_the_teachers_address_grants_nothing(browser, hostile_server):
    url, _, _ = hostile_server
    teacher = browser.new_context(viewport={"width": 1280, "height": 720})
    page = teacher.new_page()
    page.goto(url + "/effnet/teacher")
    page.get_by_label("Teacher password").fill("s3cret")
    page.get_by_role("button", name="Sign in as the teacher").click()
    page.get_by_text("Signed in as the teacher").first.wait_for(timeout=ms(60))
    page.goto(url + "/train")
    page.get_by_text("New runs").first.wait_for(timeout=ms(60))
    settle(page, 1)
    assert "owner" not in page.url and "owner=" not in page.content()
    assert page.get_by_role("button", name="Stop").count() + page.get_by_text("Only its owner").count() >= 0
    page.reload()
    page.get_by_text("Signed in as the teacher").first.wait_for(timeout=ms(60))  # a reload keeps the sign-in
    second = teacher.new_page()
    second.goto(url + "/train")
    second.get_by_text("Signed in as the teacher").first.wait_for(timeout=ms(60))  # so does a new tab
    page.screenshot(path=str(ARTIFACTS / "teacher-signed-in-1280.png"))
    stranger = browser.new_context(viewport={"width": 1280, "height": 720}).new_page()
    stranger.goto(page.url)  # the address on the projector
    stranger.get_by_text("New runs").first.wait_for(timeout=ms(60))
    settle(stranger, 1)
    assert stranger.get_by_text("Signed in as the teacher").count() == 0
    assert stranger.get_by_text("Sign in as the teacher").count() >= 1


# ----------------------------------------------------------------------------- a room full of runs
def write_room(root: Path) -> None:
    """30 runs as a class makes them: three recipes of EfficientNets, a few ResNet-18s, two owners, a grid study
    and an import (written with the lab's own writers; their numbers are what the charts are about)."""
    from fake_runs import fake_run, row

    from effnet import ScalingSpec
    from effnet.arch.baselines import BaselineSpec
    from effnet.base import files

    recipes = [dict(subset=2000), dict(subset=500), dict(subset=None)]
    for i in range(30):
        epochs, recipe = (3, 2, 1)[i % 3], recipes[i % 3]
        spec = (BaselineSpec(model="resnet18", num_classes=100) if i in (6, 15, 24) else
                ScalingSpec(phi=-4 + 0.25 * (i // 3), num_classes=100))
        rows = [row(e, 10.0 + i + 5 * e, 9.0 + i + 5 * e) for e in range(1, epochs + 1)]
        job = {"label": f"run {i:02d} of student {'ab'[i % 2]}", "owner": ("a" if i % 2 else "b") * 32,
               **({"imported": "batch-1"} if i >= 27 else {})}
        fake_run(root, f"20261204-1200{i:02d}-r{i:02d}-{i:04x}", rows, spec=spec, job=job, **recipe)
    (root / "studies" / "grid-20261204").mkdir(parents=True)
    files.write_json(root / "studies" / "grid-20261204" / "study.json", {"kind": "grid", "runs": [
        {"run": f"../../20261204-1200{i:02d}-r{i:02d}-{i:04x}", "macs": 1, "params": 1, "alpha": 1.2, "beta": 1.1,
         "gamma": 1.15} for i in range(0, 12, 3)]})


@pytest.fixture(scope="module")
def room_server(cifar_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("room") / "checkpoints"
    write_room(root)
    yield from serve(root, cifar_dir, tmp_path_factory.mktemp("streamlit-room"))


def chart_layouts(page) -> list[dict]:
    """Each plotly chart on the page: its legend's and x-axis title's boxes, its svg's, legend entries, labels."""
    return page.evaluate("""() => [...document.querySelectorAll('.js-plotly-plot')].map(plot => {
        const box = sel => { const e = plot.querySelector(sel); if (!e) return null;
                             const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
        return {title: (plot.querySelector('.gtitle') || {}).textContent || '', legend: box('.legend'),
                xtitle: box('.g-xtitle'), svg: box('.main-svg'), entries: plot.querySelectorAll('.legend .traces').length,
                labels: [...plot.querySelectorAll('.textpoint text')].filter(t => t.textContent).length};
    })""")


def overlaps(a: list[float] | None, b: list[float] | None) -> bool:
    return bool(a and b) and a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def whole(inner: list[float] | None, outer: list[float] | None) -> bool:
    """``inner`` lies within ``outer`` (a legend inside its chart: nothing cut off at an edge)."""
    return bool(inner and outer) and inner[0] >= outer[0] - 1 and inner[1] >= outer[1] - 1 \
        and inner[2] <= outer[2] + 1 and inner[3] <= outer[3] + 1


def test_a_room_of_thirty_runs_keeps_the_results_and_train_charts_readable(browser, room_server):
    """With 14 runs the labels piled into a blur, a line joined 3- and 2-epoch runs, the Train page's legend was cut
    after 4 runs and covered "epoch". Now: no label past 8 points (hover names the run), one line per recipe,
    legends whole and below their axis titles, and the charts filter to one recipe or study."""
    page = projector_page(browser, room_server, "/results", "Table 1, from your runs")
    page.locator(".js-plotly-plot .legend").first.wait_for(timeout=ms(60))
    settle(page, 2)
    charts = {c["title"]: c for c in chart_layouts(page)}
    for title in ("Accuracy vs parameters", "Accuracy vs multiply-adds (paper's FLOPs)"):
        c = charts[title]
        assert c["labels"] == 0, c  # 30 points: named on hover, not printed over each other
        assert c["entries"] == 4, c  # EfficientNet x 3 recipes, and the ResNet-18s (all of one recipe)
        assert not overlaps(c["legend"], c["xtitle"]) and whole(c["legend"], c["svg"]), c
    figure1 = page.evaluate("""() => [...document.querySelectorAll('.js-plotly-plot')]
        .filter(p => (p.querySelector('.gtitle') || {}).textContent.startsWith('ImageNet top-1'))
        .flatMap(p => [...p.querySelectorAll('.textpoint text, .annotation-text')])
        .filter(t => t.textContent).map(t => { const r = t.getBoundingClientRect();
                                              return [t.textContent, r.left, r.top, r.right, r.bottom]; })""")
    assert len(figure1) >= 15, figure1  # B0-B7 and the cited networks, each named
    collide = [(a[0], b[0]) for i, a in enumerate(figure1) for b in figure1[i + 1:] if overlaps(a[1:], b[1:])]
    assert not collide, collide  # resnet18/resnet34, densenet121/densenet161 printed over each other
    assert_no_exception(page)
    page.locator(".js-plotly-plot").first.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "results-30-runs-1280.png"))
    box = page.get_by_role("combobox", name="Runs in the charts")
    box.click()
    box.press_sequentially("study: grid")
    box.press("Enter")
    page.wait_for_function("() => [...document.querySelectorAll('.js-plotly-plot .textpoint text')]"
                           ".some(t => t.textContent)", timeout=ms(30))  # 4 runs: labelled again
    page = projector_page(browser, room_server, "/", "1. The question: how should a network grow?")
    plot = page.locator(".js-plotly-plot").first
    plot.wait_for(timeout=ms(60))
    plot.scroll_into_view_if_needed()
    caption = page.get_by_text("The paper's Figure 1, redrawn from").first.bounding_box()
    assert caption["y"] + caption["height"] - plot.bounding_box()["y"] <= 720, "Figure 1 and its caption: one screen"
    page = projector_page(browser, room_server, "/train", "New runs")
    page.locator(".js-plotly-plot .legend").first.wait_for(timeout=ms(60))
    settle(page, 2)
    for c in chart_layouts(page):
        assert c["entries"] == 20, c  # every run the page shows, none cut off
        assert not overlaps(c["legend"], c["xtitle"]) and whole(c["legend"], c["svg"]), c
    assert_no_exception(page)
    page.locator(".js-plotly-plot").first.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "train-30-runs-1280.png"))


SMALL_TEXT = """() => { const out = []; const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    while (walk.nextNode()) { const e = walk.currentNode.parentElement; if (!walk.currentNode.textContent.trim()) continue;
        const r = e.getBoundingClientRect(), st = getComputedStyle(e);
        if (r.width < 2 || r.height < 2 || st.visibility === 'hidden') continue;  // KaTeX's MathML copy: 1 px, unseen
        if (parseFloat(st.fontSize) < 14) out.push(st.fontSize + ' ' + walk.currentNode.textContent.trim().slice(0, 40)); }
    return out; }"""


@pytest.mark.parametrize("path, text", [("/", "1. The question"), ("/explorer", "Compound scaling explorer"),
                                        ("/train", "New runs"), ("/results", "Table 1, from your runs"),
                                        ("/cam", "Class activation maps"), ("/study", "Studies"),
                                        ("/compress", "Compress")])
def test_no_text_under_14_px_on_any_page_with_thirty_runs(browser, room_server, path, text):
    """Run ids and command lines were 12 px, a formula's exponents 13.6 px: unreadable from the back of a room."""
    page = projector_page(browser, room_server, path, text)
    settle(page, 2)
    assert page.evaluate(SMALL_TEXT) == []
    assert_no_exception(page)


def test_the_studies_page_follows_a_study_to_its_end_without_a_reload(browser, cifar_dir, tmp_path):
    """After a study finished, "What each ... looks at" said "no checkpoint yet" and the export list lacked it until
    a reload: the page is drawn again when its runs' checkpoints or the study's end change."""
    import os
    import time

    from fake_runs import fake_run, row

    from effnet.arch.model import build_model
    from effnet.base import files
    from effnet.training import runs
    from effnet.training.checkpoint import save_checkpoint

    root = tmp_path / "checkpoints"
    made = [fake_run(root, f"20261204-130000-{name}-000{i}", [row(1, 30.0, 30.0)], state="running")
            for i, name in enumerate(("se", "none"))]
    (root / "studies" / "attention-1").mkdir(parents=True)
    files.write_json(root / "studies" / "attention-1" / "study.json", {"kind": "attention", "runs": [
        {"run": f"../../{d.name}", "attention": d.name.split("-")[2], "macs": 1_000_000, "params": 1_000_000}
        for d in made]})
    for url in serve(root, cifar_dir, tmp_path):
        page = projector_page(browser, url, "/study", "Where each attention looks")
        page.get_by_text("Maps appear once the runs have a checkpoint").first.wait_for(timeout=ms(60))
        for d in made:  # the runs end: weights, then the finished state
            spec = runs.read_run(d).spec
            save_checkpoint(d / runs.BEST, {"model": build_model(spec).state_dict(), "spec": spec.to_dict(), "epoch": 1})
            files.write_json(d / runs.STATUS, {"state": "finished", "epoch": 1, "epochs": 1, "step": 1, "steps": 1,
                                               "pid": os.getpid(), "heartbeat": time.time()})
        page.get_by_text("dark purple: no evidence").first.wait_for(timeout=ms(60))  # the CAMs, without a reload
        export = page.get_by_role("combobox", name="Export")
        export.click()
        export.press_sequentially("study:")
        page.get_by_role("option", name="study:").first.wait_for(timeout=ms(30))
        assert_no_exception(page)

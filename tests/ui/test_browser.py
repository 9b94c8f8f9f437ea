"""End-to-end browser tests: the real app (`python app.py`) in a subprocess, clicked through in headless Chromium.

Tiny offline models, a small demo workspace. Every step checks that Gradio shows no error (no error toast, no
component in the "Error" state) and the server logs no traceback; the bad-input test checks that each mistake gives
a visible error and leaves the workspace as it was. The server must listen on 127.0.0.1 only.

Set AIR_SCREENSHOTS=1 to (re)write assets/screenshots/{setup,synthesize,pseudolabels,train,results}.png.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
SCREENSHOTS = REPO / "assets" / "screenshots"
TIMEOUT_MS = 60_000  # generous per-step limit for a slow CI box; no test asserts wall-clock time

pytestmark = pytest.mark.browser

try:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the environment
    sync_playwright = None

if sync_playwright is None:
    pytestmark = [pytest.mark.browser, pytest.mark.skip(reason="playwright (Python) is not installed: "
                                                                  "pip install -r requirements-test.txt")]
elif not CHROMIUM.is_file():
    pytestmark = [pytest.mark.browser, pytest.mark.skip(reason=f"no Chromium at {CHROMIUM}: apt-get install chromium "
                                                                  "(`playwright install` is not used)")]

# Gradio 6.31 shows a raised gr.Error (and any unexpected exception, with show_error=True) as a toast:
#   <div data-testid="toast-body" class="toast-body error ..."> ... <div data-testid="toast-text">message</div>
ERROR_TOAST = '[data-testid="toast-body"].error'
# ... and marks each output of the failed event with a status tracker reading "Error"
ERROR_STATUS = '[data-testid="status-tracker"] .error'
PRUNED_MANUAL = re.compile(r"^✗ pruned \(manual\)")


# ------------------------------------------------------------------------------------------------ server fixtures
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prepare_workspace(ws: Path) -> None:
    from air_app.cli import main

    rc = main(["run", "--config", str(REPO / "configs" / "demo.yaml"), "--workspace", str(ws),
               "--images", str(REPO / "assets" / "demo" / "images"),
               "--classes", str(REPO / "assets" / "demo" / "classes.txt"),
               "--prompt", "none", "-q", "--synthetic-per-class", "2", "--keep", "1", "--gen-steps", "2",
               "--lora-steps", "2", "--k-per-class", "4", "--seed", "0"])
    assert rc == 0, "preparing the demo workspace failed"


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    """(url, root, {name: workspace}) for a server started as `python app.py` on 127.0.0.1 and a free port.

    Each test gets its own copy of one prepared workspace: "flow" (the server's default) and "bad"."""
    root = tmp_path_factory.mktemp("studio_root")
    base = root / "base_ws"
    _prepare_workspace(base)
    workspaces = {}
    for name in ("flow", "bad"):
        workspaces[name] = root / f"ws_{name}"
        shutil.copytree(base, workspaces[name])
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "MPLBACKEND": "Agg", "TOKENIZERS_PARALLELISM": "false", "GRADIO_TEMP_DIR": str(root / "gradio_tmp"),
           "PYTHONUNBUFFERED": "1"}
    for var in ("GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT", "AIR_STUDIO_ROOT"):  # test the defaults
        env.pop(var, None)
    log_path = root / "server.log"
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--workspace", str(workspaces["flow"]),
                             "--root", str(root), "--port", str(port)], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an HTTP proxy
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"app.py exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with opener.open(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"app.py did not answer on {url}:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        yield {"url": url, "port": port, "root": root, "ws": workspaces, "log": log_path}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def context(browser):
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    ctx.set_default_timeout(TIMEOUT_MS)
    try:
        yield ctx
    finally:
        ctx.close()


# ------------------------------------------------------------------------------------------------ page helpers
def assert_no_error(page, step: str) -> None:
    """No visible error toast, and no output component showing Gradio's "Error" status."""
    toasts = page.locator(ERROR_TOAST)
    visible = [toasts.nth(i).inner_text() for i in range(toasts.count()) if toasts.nth(i).is_visible()]
    assert not visible, f"{step}: the page shows an error: {visible}"
    marks = page.locator(ERROR_STATUS)
    failed = [marks.nth(i).evaluate("e => e.closest('[id]')?.id || '?'") for i in range(marks.count())
              if marks.nth(i).is_visible()]
    assert not failed, f"{step}: components show an error status: {failed}"


def expect_error(page, text: str) -> str:
    """Wait for a visible error toast containing `text`, return its message and close every toast."""
    toast = page.locator(ERROR_TOAST).filter(has_text=text)
    expect(toast.first).to_be_visible()
    message = toast.first.locator('[data-testid="toast-text"]').inner_text()
    close_toasts(page)
    return message


def close_toasts(page) -> None:
    buttons = page.locator('[data-testid="toast-close"]')
    while buttons.count():
        try:
            buttons.first.click(timeout=2000)
        except PlaywrightError:
            break
    expect(page.locator(ERROR_TOAST)).to_have_count(0)


def assert_clean_log(server: dict, since: int) -> None:
    """No traceback in the server's output since byte `since` (user mistakes are logged without one)."""
    text = server["log"].read_bytes()[since:].decode("utf-8", "replace")
    assert "Traceback" not in text, f"the server logged a traceback:\n{text[-4000:]}"


def log_size(server: dict) -> int:
    return server["log"].stat().st_size


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()


def set_number(page, elem_id: str, value, enter: bool = False) -> None:
    box = page.locator(f"#{elem_id} input[type=number]").first
    box.fill(str(value))
    if enter:
        box.press("Enter")
    else:
        box.blur()


def gallery_captions(page, elem_id: str) -> list[str]:
    return page.locator(f"#{elem_id} .gallery-item img").evaluate_all("els => els.map(e => e.alt)")


def gallery_sources(page, elem_id: str) -> list[str]:
    return page.locator(f"#{elem_id} .gallery-item img").evaluate_all(
        "els => els.map(e => e.getAttribute('src').split('/').pop())")


def screenshot(page, name: str) -> None:
    if os.environ.get("AIR_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.wait_for_timeout(500)  # let images and plots finish painting
        png = page.screenshot(full_page=True)
        from PIL import Image

        # a 256-colour palette keeps the full-page PNGs small (well under 400 KB) and crisp
        image = Image.open(io.BytesIO(png)).convert("RGB")
        image.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(
            SCREENSHOTS / f"{name}.png", optimize=True)


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket listening on `port` (from /proc/net/tcp{,6}; Linux)."""
    out = set()
    for name, width in (("tcp", 8), ("tcp6", 32)):
        path = Path("/proc/net") / name
        if not path.is_file():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, state = fields[1], fields[3]
            addr, p = local.split(":")
            if state != "0A" or int(p, 16) != port:  # 0A = LISTEN
                continue
            raw = bytes.fromhex(addr)
            if width == 8:
                out.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
            else:  # four little-endian 32-bit words
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                out.add(socket.inet_ntop(socket.AF_INET6, words))
    return out


def non_loopback_ips() -> list[str]:
    ips = set()
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            ips.add(info[4][0])
    except OSError:
        pass
    try:  # the address used to reach the outside (no packet is sent)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            ips.add(s.getsockname()[0])
    except OSError:
        pass
    return sorted(ip for ip in ips if not ip.startswith("127."))


# ------------------------------------------------------------------------------------------------ tests
def test_full_flow(app_server, context):
    """Setup → Synthesize (generate, prune, survives reload) → Pseudo-labels (λ, Grad-CAM) → Train → Results."""
    log_start = log_size(app_server)
    # served on the loopback interface only
    if Path("/proc/net/tcp").is_file():
        addrs = listening_addresses(app_server["port"])
        assert addrs == {"127.0.0.1"}, f"the app listens on {addrs or 'nothing'}, expected 127.0.0.1 only"
    for ip in non_loopback_ips():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            assert s.connect_ex((ip, app_server["port"])) != 0, f"the app answers on {ip}"

    page = context.new_page()
    page.goto(app_server["url"])
    banner = page.locator("#tiny-banner")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("TINY MODELS")
    expect(page.locator("#setup-status")).to_contain_text("4 classes")
    assert_no_error(page, "open the page")
    screenshot(page, "setup")

    # ---- Synthesize: generate two more samples per class
    open_tab(page, "Synthesize")
    expect(page.locator("#synth-gallery .gallery-item")).to_have_count(2)
    set_number(page, "per-class", 4)
    set_number(page, "keep", 2)
    set_number(page, "gen-steps", 2)
    page.locator("#generate-btn").click()
    expect(page.locator("#synth-status")).to_contain_text("finished", timeout=90_000)
    expect(page.locator("#synth-status")).to_contain_text("generated 8 images")
    expect(page.locator("#synth-gallery .gallery-item")).to_have_count(4)
    assert_no_error(page, "generate samples")

    # ---- prune one kept sample by clicking it
    captions = gallery_captions(page, "synth-gallery")
    target = next(i for i, c in enumerate(captions) if c.startswith("✓ kept"))
    name = gallery_sources(page, "synth-gallery")[target]
    page.locator("#synth-gallery .gallery-item button").nth(target).click()
    item = page.locator("#synth-gallery .gallery-item img").nth(target)
    expect(item).to_have_attribute("alt", PRUNED_MANUAL)
    assert_no_error(page, "prune a sample")
    screenshot(page, "synthesize")

    # ---- the decision survives a reload
    page.reload()
    expect(page.locator("#tiny-banner")).to_be_visible()
    open_tab(page, "Synthesize")
    expect(page.locator("#synth-gallery .gallery-item")).to_have_count(4)
    assert gallery_sources(page, "synth-gallery")[target] == name
    expect(page.locator("#synth-gallery .gallery-item img").nth(target)).to_have_attribute("alt", PRUNED_MANUAL)
    assert_no_error(page, "reload")

    # ---- Pseudo-labels: moving λ re-fuses
    open_tab(page, "Pseudo-labels")
    metrics = page.locator("#pl-metrics")
    expect(metrics).to_contain_text("Pseudo-label accuracy")
    before = metrics.inner_text()
    texts = []
    for lam in (0, 3):
        set_number(page, "lam-slider", lam, enter=True)
        expect(metrics).to_contain_text(f"λ = {lam},")
        texts.append(metrics.inner_text())
    assert texts[0] != before and texts[1] != texts[0], "the metrics did not follow λ"
    fused_at_3 = re.search(r"fused (\S+%)", texts[1]).group(1)
    expect(page.locator("#cm-fused img")).to_be_visible()
    assert_no_error(page, "move λ")

    # ---- inspect a disagreement: three Grad-CAM overlays
    disagreements = page.locator("#disagreements .gallery-item button")
    if disagreements.count():
        disagreements.first.click()
    else:
        set_number(page, "inspect-row", 0)
        page.locator("#inspect-btn").click()
    for cam in ("cam-text", "cam-aux", "cam-fused"):
        expect(page.locator(f"#{cam} img")).to_be_visible()
    expect(page.locator("#inspect-top5")).to_contain_text("Fused")
    assert_no_error(page, "inspect an image")
    screenshot(page, "pseudolabels")

    # ---- Train one epoch
    open_tab(page, "Train")
    set_number(page, "epochs", 3)
    page.locator("#train-btn").click()
    expect(page.locator("#train-final")).to_contain_text("Test accuracy", timeout=90_000)
    expect(page.locator("#train-status")).to_contain_text("finished")
    # the live plot draws one line per metric (vega renders SVG; an empty path "d" means nothing was drawn)
    lines = page.locator("#train-plot .mark-line path")
    expect(lines.first).to_be_attached()
    drawn = lines.evaluate_all("els => els.map(e => [(e.getAttribute('d') || '').length, e.getAttribute('stroke')])")
    visible = [d for d in drawn if d[0] > 10 and d[1] not in (None, "", "none", "transparent")]
    assert len(visible) >= 2, f"the training plot draws no visible lines: {drawn}"
    expect(page.locator("#train-plot")).to_contain_text("train accuracy")  # the legend
    assert_no_error(page, "train")
    screenshot(page, "train")

    # ---- Results
    open_tab(page, "Results")
    run_row = page.locator('#runs-table [role=row][aria-rowindex="2"]')  # row 1 is the header
    expect(run_row).to_be_visible()
    expect(run_row).to_contain_text("textual")
    for name in ("prompt.safetensors", "predictions.csv", "air_report.zip"):
        expect(page.locator(f'#downloads td.filename[aria-label="{name}"]')).to_be_visible()
    expect(page.locator("#downloads [data-testid=download-link]").first).to_be_visible()
    summary = page.locator("#results-summary")
    expect(summary).to_contain_text("Test accuracy")
    # the report describes the pseudo-labels the prompts were trained on (λ = 3 from the Pseudo-labels tab)
    expect(summary).to_contain_text(f"fused {fused_at_3} (λ = 3")
    assert_no_error(page, "results")
    screenshot(page, "results")
    assert_clean_log(app_server, log_start)



def _sample_rows(ws: Path) -> dict[int, tuple]:
    from air_app.workspace import Workspace

    w = Workspace.open(ws)
    try:
        return {r.id: (r.class_idx, r.idx, r.path, r.sha, r.kept) for r in w.synthetic()}
    finally:
        w.close()


def _index_rows(ws: Path) -> tuple:
    from air_app.workspace import Workspace

    w = Workspace.open(ws)
    try:
        return tuple(w.classes()), tuple((r.path, r.split, r.gt) for r in w.images())
    finally:
        w.close()


def test_bad_input_gives_visible_errors(app_server, context):
    """Each mistake in the UI shows a visible error; nothing is extracted or lost; the workspace still opens."""
    root, ws = app_server["root"], app_server["ws"]["bad"]
    samples_before, index_before = _sample_rows(ws), _index_rows(ws)
    log_start = log_size(app_server)
    assert samples_before

    page = context.new_page()
    page.goto(app_server["url"])
    expect(page.locator("#tiny-banner")).to_be_visible()
    page.locator("#ws-path textarea, #ws-path input").first.fill(str(ws))
    page.locator("#open-btn").click()
    expect(page.locator("#setup-status")).to_contain_text(str(ws))
    expect(page.locator("#classes textarea")).to_have_value("red circle\nblue square\ngreen triangle\nstriped texture")
    assert_no_error(page, "open the workspace")

    classes, images_dir = page.locator("#classes textarea"), page.locator("#images-dir textarea, #images-dir input")
    create = page.locator("#create-btn")

    # no class names
    classes.fill("")
    create.click()
    assert "no class names" in expect_error(page, "class names")
    expect(page.locator(f"#setup-status {ERROR_STATUS}")).to_be_visible()  # what assert_no_error looks for

    # duplicate class names (the same after normalisation)
    classes.fill("red circle\nblue square\nRed_Circle")
    images_dir.first.fill(str(REPO / "assets" / "demo" / "images"))
    create.click()
    assert "twice" in expect_error(page, "twice")

    # a server folder outside the allowed root
    classes.fill("red circle\nblue square\ngreen triangle\nstriped texture")
    images_dir.first.fill("/etc")
    create.click()
    assert "outside the allowed folder" in expect_error(page, "outside the allowed folder")

    # a zip whose entry escapes its folder: refused before anything is written
    images_dir.first.fill("")
    evil = root / "upload_src" / "evil.zip"
    evil.parent.mkdir(exist_ok=True)
    good = next((REPO / "assets" / "demo" / "images" / "red_circle").iterdir())
    with zipfile.ZipFile(evil, "w") as z:
        z.write(good, "red_circle/ok.jpg")
        z.writestr("../evil.jpg", good.read_bytes())
    page.locator("#uploads input[type=file]").set_input_files(str(evil))
    expect(page.locator('#uploads td.filename[aria-label="evil.zip"]')).to_be_visible()
    create.click()
    assert "escapes its folder" in expect_error(page, "escapes its folder")
    assert not list(root.rglob("evil.jpg")), "a zip entry was extracted outside its folder"
    assert not (ws / "uploads").exists(), "something was extracted from a refused zip"

    # a second generation while one runs (two pages, two sessions, one job slot)
    page.reload()  # clears the error marks; the browser reopens the workspace it used last
    expect(page.locator("#setup-status")).to_contain_text(str(ws))
    assert_no_error(page, "reload after the errors")
    open_tab(page, "Synthesize")
    expect(page.locator("#synth-gallery .gallery-item")).to_have_count(2)
    captions_before = gallery_captions(page, "synth-gallery")
    set_number(page, "per-class", 1000)  # runs far longer than the steps below; cancelled at the end
    set_number(page, "gen-steps", 8)
    page.locator("#generate-btn").click()
    expect(page.locator("#synth-status")).to_contain_text("running")
    other = context.new_page()  # same browser: reopens the workspace this browser used last
    other.goto(app_server["url"])
    expect(other.locator("#setup-status")).to_contain_text(str(ws))
    open_tab(other, "Synthesize")
    other.locator("#generate-btn").click()
    assert "another job is running" in expect_error(other, "another job is running")
    assert_no_error(page, "the first generation")
    expect(page.locator("#synth-status")).to_contain_text("running")  # the first job was not disturbed
    page.locator("#cancel-synth-btn").click()
    expect(page.locator("#synth-status")).to_contain_text("cancelled")
    assert_no_error(page, "cancel")
    other.close()

    # the workspace still opens, with what it held before
    page.reload()
    expect(page.locator("#setup-status")).to_contain_text(str(ws))
    expect(page.locator("#setup-status")).to_contain_text("4 classes")
    open_tab(page, "Synthesize")
    expect(page.locator("#synth-gallery .gallery-item").nth(1)).to_be_visible()
    assert gallery_captions(page, "synth-gallery")[:2] == captions_before
    assert_no_error(page, "reopen the workspace")
    assert _index_rows(ws) == index_before
    samples_after = _sample_rows(ws)
    for sid, row in samples_before.items():
        assert samples_after.get(sid) == row, f"sample {sid} changed"
        assert (ws / row[2]).is_file()
    assert_clean_log(app_server, log_start)

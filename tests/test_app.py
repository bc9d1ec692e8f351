"""`segformer app`: the page's pure functions, its bad-input lines, and the page itself in headless Chromium."""

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import NAMES, save_tiny
from segformer import load_model
from segformer.apps import app as app_module
from segformer.apps.app import (
    HUGE_PIXELS,
    HUGE_SCALE,
    PROTOCOL,
    SLIDE_CROP,
    SLIDE_STRIDE,
    LegendEntry,
    ModelEntry,
    Page,
    class_shares,
    find_examples,
    legend_entries,
    legend_html,
    model_facts,
    options_for_image,
    page_options,
    read_upload,
    render_overlay,
    segment,
)
from segformer.cli import main
from segformer.cli.evaluate import describe
from segformer.imageio import ImageReadError, default_palette, write_label_png
from segformer.inference import InferenceOptions
from segformer.visualize import overlay


@pytest.fixture(scope="module")
def weights2(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("weights2"), seed=1)


@pytest.fixture(scope="module")
def entry(weights) -> ModelEntry:
    return ModelEntry(load_model(weights), str(weights), default_palette(3), NAMES, "cpu")


def photo(h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    """Blocks of colour with noise: the tiny random model sees several classes in it."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3)).repeat(16, 0).repeat(16, 1)[:h, :w]
    return np.clip(blocks + rng.integers(-30, 30, (h, w, 3)), 0, 255).astype(np.uint8)


def save(path: Path, image: np.ndarray) -> Path:
    Image.fromarray(image).save(path)
    return path


def predict_cli(weights: Path, image: Path, out: Path, *flags: str) -> Image.Image:
    """The label map `segformer predict` writes for one image."""
    assert (
        main(["predict", str(weights), str(image), "--out", str(out), "--no-progress", "--device", "cpu", *flags]) == 0
    )
    return Image.open(out / f"{image.stem}.png")


def same_label_png(a: Image.Image, b: Image.Image) -> bool:
    return a.mode == b.mode == "P" and np.array_equal(np.asarray(a), np.asarray(b)) and a.getpalette() == b.getpalette()


# ---------------------------------------------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------------------------------------------
def test_class_shares_legend_and_html(entry):
    labels = np.array([[0, 0, 2, 2], [2, 2, 2, 1]])
    assert class_shares(labels) == [(2, 0.625), (0, 0.25), (1, 0.125)]
    entries = legend_entries(labels, entry)
    pal = default_palette(3)
    assert [(e.class_id, e.name) for e in entries] == [(2, "car"), (0, "sky"), (1, "road")]
    assert entries[0].colour == "#{:02x}{:02x}{:02x}".format(*pal[2]) and entries[1].colour == "#000000"
    text = legend_html(entries, hidden=[0])
    assert "car" in text and "62.5%" in text and "25.0%" in text and "12.5%" in text
    assert text.count("opacity") == 1 and "data-class='0' style='opacity" in text  # only the hidden class is dimmed
    assert "&lt;b&gt;" in legend_html([LegendEntry(0, "<b>", "#000000", 1.0)])  # names are escaped
    assert "No prediction" in legend_html([])


def test_render_overlay_hides_classes_and_matches_predict_overlay(entry):
    image = photo(32, 40)
    labels = np.zeros((32, 40), np.int64)
    labels[:, 20:] = 1
    labels[10:20, 5:15] = 2
    pal = default_palette(3)
    full = render_overlay(image, labels, entry, alpha=1.0)
    assert np.array_equal(full, pal[labels])  # opacity 1: the class colours exactly
    hidden = render_overlay(image, labels, entry, alpha=1.0, hidden=[1])
    assert np.array_equal(hidden[labels == 1], image[labels == 1])  # a hidden class shows the image
    assert np.array_equal(hidden[labels != 1], full[labels != 1])  # and nothing else moves
    # No class hidden: the blend of `segformer predict`'s overlays, with or without its legend.
    for legend in (False, True):
        expected = overlay(image, labels, pal, NAMES, alpha=0.4, legend=legend)
        assert np.array_equal(render_overlay(image, labels, entry, alpha=0.4, legend=legend), expected)


def test_page_options_switch_mode_and_flip():
    base = InferenceOptions(batch_size=2)
    assert page_options(base, PROTOCOL, False) is base  # untouched: exactly the command line's options
    assert page_options(base, "whole", False) is base
    slide = page_options(base, "slide", True)
    assert (slide.mode, slide.crop, slide.stride, slide.flip, slide.batch_size) == (
        "slide",
        SLIDE_CROP,
        SLIDE_STRIDE,
        True,
        2,
    )
    own = InferenceOptions(mode="slide", crop=(64, 64), stride=(32, 32))
    assert page_options(own, "slide", False) is own and page_options(own, PROTOCOL, False) is own
    assert page_options(own, "whole", False).mode == "whole"
    assert page_options(InferenceOptions(mode="whole", crop=(64, 64)), "slide", False).crop == (64, 64)


def test_options_for_image_rescales_only_huge_images_at_their_own_size():
    base = InferenceOptions()
    assert options_for_image(base, 1000, 1000) == (base, None)
    huge, note = options_for_image(base, 3000, 2000)
    assert huge.scale == HUGE_SCALE and "2000x3000" in note
    assert options_for_image(base, 3000, 2000, rescale_huge=False) == (base, None)  # --scale original
    scaled = InferenceOptions(scale=(1024, 256))
    assert options_for_image(scaled, 3000, 2000) == (scaled, None)  # a test scale of its own is kept
    assert HUGE_PIXELS < 3000 * 2000


def test_segment_writes_predicts_label_map(entry, weights, tmp_path):
    path = save(tmp_path / "im.png", photo())
    labels = segment(entry, read_upload(path), InferenceOptions())
    assert len(np.unique(labels)) >= 2  # the test pictures show several classes
    write_label_png(tmp_path / "app.png", labels, entry.palette)
    assert same_label_png(Image.open(tmp_path / "app.png"), predict_cli(weights, path, tmp_path / "pred"))
    flip = segment(entry, read_upload(path), page_options(InferenceOptions(), "whole", True))
    write_label_png(tmp_path / "flip.png", flip, entry.palette)
    assert same_label_png(Image.open(tmp_path / "flip.png"), predict_cli(weights, path, tmp_path / "pf", "--flip"))


def test_huge_image_runs_at_the_test_scale_and_keeps_its_size(entry, weights, tmp_path):
    h, w = 1500, 3000  # 4.5 MP
    ramp = np.linspace(0, 255, w, dtype=np.float32)
    image = np.stack([np.tile(ramp, (h, 1)), np.tile(ramp[::-1], (h, 1)), np.full((h, w), 90.0)], -1).astype(np.uint8)
    path = save(tmp_path / "huge.png", image)
    options, note = options_for_image(InferenceOptions(), h, w)
    assert note and options.scale == HUGE_SCALE
    labels = segment(entry, read_upload(path), options)
    assert labels.shape == (h, w)
    write_label_png(tmp_path / "app.png", labels, entry.palette)
    expected = predict_cli(weights, path, tmp_path / "pred", "--scale", f"{HUGE_SCALE[0]}x{HUGE_SCALE[1]}")
    assert same_label_png(Image.open(tmp_path / "app.png"), expected)


def test_read_upload_names_the_file_not_the_server_folder(tmp_path):
    fake = tmp_path / "notes.png"
    fake.write_text("not an image\n")
    with pytest.raises(ImageReadError) as e:
        read_upload(fake)
    assert str(e.value).startswith("notes.png is not an image") and str(tmp_path) not in str(e.value)


def test_model_facts_and_examples(entry, tmp_path):
    facts = model_facts(replace(entry, options=InferenceOptions(flip=True)), describe)
    assert "**variant**: custom" in facts  # the tiny test model is no named variant
    n = sum(p.numel() for p in entry.model.parameters())
    assert f"{n / 1e6:.2f} M" in facts and "sky, road, car" in facts and "(3)" in facts
    assert "whole, original size, flip; images over 4.2 MP run at 2048x512" in facts
    scaled = model_facts(replace(entry, options=InferenceOptions(scale=(1024, 512))), describe)
    assert "whole, scale 1024x512" in scaled and "MP" not in scaled
    for i in range(10):
        save(tmp_path / f"{i:02d}.png", photo(8, 8))
    (tmp_path / "readme.txt").write_text("x")
    found = find_examples(tmp_path, limit=3)
    assert [Path(p).name for p in found] == ["00.png", "01.png", "02.png"]
    assert find_examples(tmp_path / "absent") == [] and find_examples(None) == []


# ---------------------------------------------------------------------------------------------------------------
# The page's logic, driven without Gradio: what each event shows and writes
# ---------------------------------------------------------------------------------------------------------------
def test_page_predicts_an_upload_as_predict_does_and_switches_flip(entry, weights, tmp_path):
    page = Page([entry], describe=describe, work_dir=tmp_path / "work")
    path = save(tmp_path / "street view.png", photo(seed=3))
    got = page.predict(path, "street view.png")
    assert got.status == "street view.png: 128x96, whole, original size"
    expected = predict_cli(weights, path, tmp_path / "pred")
    (label_file,) = got.label_files
    assert label_file.name == "street_view.png" and same_label_png(Image.open(label_file), expected)
    assert np.array_equal(got.upload.labels[0], np.asarray(expected)) and got.upload.stem == "street_view"
    shares = class_shares(np.asarray(expected))
    assert got.classes == ((tuple((NAMES[c], c) for c, _ in shares)),)  # largest first, all checked
    flipped = page.predict(path, "street view.png", "whole", True)
    assert "flip" in flipped.status and flipped.label_files[0].parent != label_file.parent  # a folder per image
    assert same_label_png(Image.open(flipped.label_files[0]), predict_cli(weights, path, tmp_path / "pf", "--flip"))
    slide = page.predict(path, "", "slide", False)
    # No name given: the file's own; slide without a window of the model's own: the page's (SLIDE_CROP).
    assert slide.status == "street view.png: 128x96, slide, original size, crop 512x512 stride 341x341"


def test_page_renders_opacity_hidden_classes_and_overlay_downloads(entry, weights, weights2, tmp_path):
    other = replace(entry, model=load_model(weights2), source=str(weights2))
    page = Page([entry, other], describe=describe, work_dir=tmp_path / "work")
    image = photo(seed=3)
    got = page.predict(save(tmp_path / "street.png", image), "street.png")
    assert [f.name for f in got.label_files] == ["street_model1.png", "street_model2.png"]
    assert got.status.startswith("street.png: 128x96; model 1: whole") and "; model 2: whole" in got.status
    everything = [[c for _, c in classes] for classes in got.classes]
    pal = default_palette(3)
    first, second = page.render(got.upload, 1.0, everything)
    for shown, labels in ((first, got.upload.labels[0]), (second, got.upload.labels[1])):
        assert np.array_equal(shown.overlay, pal[labels])  # opacity 1: exactly the class colours
    assert not np.array_equal(got.upload.labels[0], got.upload.labels[1])  # two models, two answers
    assert first.overlay_file.name == "street_overlay_model1.png" and second.overlay_file.name.endswith("model2.png")
    drawn = overlay(image, got.upload.labels[0], pal, NAMES, alpha=1.0, legend=True)
    assert np.array_equal(np.asarray(Image.open(first.overlay_file)), drawn)  # the download has the legend
    assert "opacity" not in first.legend and NAMES[got.classes[0][0][1]] in first.legend

    top = got.classes[0][0][1]
    hidden, _ = page.render(got.upload, 0.4, [[c for c in everything[0] if c != top], everything[1]])
    labels = got.upload.labels[0]
    assert np.array_equal(hidden.overlay[labels == top], image[labels == top])  # a hidden class shows the image
    expected = render_overlay(image, labels, entry, alpha=0.4, hidden=[top])
    assert np.array_equal(hidden.overlay, expected) and f"data-class='{top}' style='opacity" in hidden.legend
    assert hidden.overlay_file != first.overlay_file and first.overlay_file.exists()  # a new file per rendering
    none_shown, _ = page.render(got.upload, 1.0, [None, everything[1]])
    assert np.array_equal(none_shown.overlay, image)  # no box checked: the image alone


def test_page_says_why_an_upload_cannot_be_shown(entry, tmp_path, monkeypatch):
    page = Page([entry, entry], work_dir=tmp_path / "work")
    assert page.predict(None) == page._nothing("") and page._nothing("").label_files == (None, None)
    fake = tmp_path / "notes.png"
    fake.write_text("not an image\n")
    bad = page.predict(fake, "notes.png")
    assert bad.upload is None and bad.status.startswith("**Could not use the upload:** notes.png is not an image")

    def out_of_memory(*args):
        raise RuntimeError("not enough memory: you tried to allocate 9 GB\ntraceback details")

    monkeypatch.setattr(app_module, "segment", out_of_memory)
    failed = page.predict(save(tmp_path / "a.png", photo()), "a.png")
    assert failed == page._nothing("**Prediction failed:** not enough memory: you tried to allocate 9 GB")
    empty = page.render(None, 0.5, [None, None])
    assert [(r.overlay, r.overlay_file) for r in empty] == [(None, None)] * 2 and "No prediction" in empty[0].legend


def test_page_facts_title_flip_and_its_temporary_folder(entry):
    flipping = replace(entry, options=InferenceOptions(flip=True))
    page = Page([flipping, entry], describe=describe)
    assert page.facts(0) == model_facts(flipping, describe) and "flip" not in page.facts(1)
    assert page.title == f"SegFormer: {entry.source} vs {entry.source}" and page.flip is False
    assert Page([flipping]).flip is True
    folder = page.work
    assert folder.is_dir()
    del page
    assert not folder.exists()  # the temporary download folder goes with the page
    with pytest.raises(ValueError, match="at least one model"):
        Page([])


# ---------------------------------------------------------------------------------------------------------------
# The command's bad-input lines: each ends before a server starts
# ---------------------------------------------------------------------------------------------------------------
def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("segformer app: error: ")
    return err


def test_app_model_that_fails_to_load_is_one_line(tmp_path, capsys):
    import gradio  # noqa: F401  (the app extra, in dev: CI runs these tests)

    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"not weights")
    start = time.perf_counter()
    assert main(["app", str(bad), "--port", str(free_port())]) == 2
    assert "model.safetensors" in _one_line_error(capsys)
    assert main(["app", str(tmp_path / "absent"), "--port", str(free_port())]) == 2
    assert "no such file or folder" in _one_line_error(capsys)
    assert time.perf_counter() - start < 30  # returned: no server was started


def test_app_port_in_use_is_one_line(weights, capsys):
    import gradio  # noqa: F401  (the app extra, in dev: CI runs these tests)

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["app", str(weights), "--host", "127.0.0.1", "--port", str(port)]) == 2
    err = _one_line_error(capsys)
    assert f"port {port} on 127.0.0.1 is already in use" in err


def test_app_without_gradio_names_the_extra(weights, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` raises ImportError
    assert main(["app", str(weights)]) == 2
    assert "pip install 'segformer[app]'" in _one_line_error(capsys)


def test_build_app_side_by_side(entry):
    import gradio  # noqa: F401  (the app extra, in dev: CI runs these tests)

    from segformer.apps.app import build_app

    page = build_app([entry, entry], describe=describe)
    ids = {b.elem_id for b in page.blocks.values() if getattr(b, "elem_id", None)}
    assert {"input-image", "overlay-0", "overlay-1", "download-labels-1", "classes-1", "status"} <= ids
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False" and not page.analytics_enabled


# ---------------------------------------------------------------------------------------------------------------
# The page in a real browser
# ---------------------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_chromium() -> str | None:
    for name in (os.environ.get("SEGFORMER_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and (path := shutil.which(name)):
            return path
    return None


@pytest.fixture(scope="module")
def browser():
    import gradio  # noqa: F401  (the app extra, in dev: CI runs these tests)
    from playwright import sync_api

    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium, or set SEGFORMER_CHROMIUM)")
    with sync_api.sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-dev-shm-usage"])
        except Exception as e:
            pytest.skip(f"cannot launch {chromium}: {str(e).splitlines()[0]}")
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(weights, weights2, tmp_path_factory):
    """`segformer app` with a second model to compare, opacity 1, in its own process on a free port."""
    examples = tmp_path_factory.mktemp("examples")
    save(examples / "ex0.png", photo(seed=5))
    port = free_port()
    argv = ["-m", "segformer", "app", str(weights), "--compare", str(weights2), "--port", str(port), "--alpha", "1"]
    argv += ["--device", "cpu", "--examples", str(examples)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), *sys.path])}
    proc = subprocess.Popen([sys.executable, *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        if proc.poll() is not None:
            pytest.fail(f"segformer app exited with {proc.returncode}:\n{proc.stdout.read().decode()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"segformer app did not answer on {url} within 90 s:\n{proc.stdout.read().decode()}")
        time.sleep(0.3)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    outside: list[str] = []
    context.on("request", lambda r: None if r.url.startswith((server, "data:", "blob:")) else outside.append(r.url))
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    pg.goto(server)
    yield pg
    context.close()
    assert not outside, f"the page fetched from outside the server: {outside}"


def upload(page, path: Path) -> None:
    page.locator("#input-image input[type=file]").set_input_files(str(path))


def overlay_pixels(page, i: int = 0) -> tuple[str, np.ndarray]:
    src = page.locator(f"#overlay-{i} img").get_attribute("src")
    body = page.request.get(src).body()
    return src, np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))


def wait_for_new_overlay(page, old_src: str | None, i: int = 0) -> tuple[str, np.ndarray]:
    page.wait_for_function(
        "([sel, old]) => { const im = document.querySelector(sel); return im && im.src && im.src !== old; }",
        arg=[f"#overlay-{i} img", old_src or ""],
    )
    return overlay_pixels(page, i)


def download(page, elem_id: str, folder: Path) -> Path:
    with page.expect_download() as info:
        page.locator(f"#{elem_id}").click()
    target = folder / info.value.suggested_filename
    info.value.save_as(target)
    return target


@pytest.mark.browser
def test_page_label_map_equals_predict(page, weights, weights2, tmp_path):
    image = photo(seed=3)
    path = save(tmp_path / "street.png", image)
    upload(page, path)
    _, shown = wait_for_new_overlay(page, None)
    page.get_by_text("street.png: 128x96").wait_for()
    got = download(page, "download-labels-0", tmp_path / "page")
    assert got.name == "street_model1.png"  # two models: the files say which
    expected = predict_cli(weights, path, tmp_path / "pred")
    assert same_label_png(Image.open(got), expected)
    labels = np.asarray(expected)
    assert np.array_equal(shown, default_palette(3)[labels])  # opacity 1: exactly the class colours
    legend = page.locator("#legend-0").inner_text()
    for class_id, share in class_shares(labels):
        assert NAMES[class_id] in legend and f"{100 * share:.1f}%" in legend
    # The second model, side by side, on the same image.
    _, shown2 = overlay_pixels(page, 1)
    expected2 = predict_cli(weights2, path, tmp_path / "pred2")
    assert np.array_equal(shown2, default_palette(3)[np.asarray(expected2)])
    assert same_label_png(Image.open(download(page, "download-labels-1", tmp_path / "page2")), expected2)
    # Flip TTA on the page: predict --flip.
    page.locator("#flip input[type=checkbox]").check()
    page.locator("#status", has_text="flip").wait_for()
    got = download(page, "download-labels-0", tmp_path / "flip")
    assert same_label_png(Image.open(got), predict_cli(weights, path, tmp_path / "pf", "--flip"))
    overlay_file = download(page, "download-overlay-0", tmp_path / "ov")
    assert overlay_file.name == "street_overlay_model1.png" and Image.open(overlay_file).size == (128, 96)


@pytest.mark.browser
def test_page_hides_and_shows_a_class(page, tmp_path):
    image = photo(seed=3)
    upload(page, save(tmp_path / "street.png", image))
    src, before = wait_for_new_overlay(page, None)
    labels = np.asarray(Image.open(download(page, "download-labels-0", tmp_path)))
    class_id = class_shares(labels)[0][0]
    colour = default_palette(3)[class_id]
    assert (before == colour).all(-1).sum() >= (labels == class_id).sum() > 0

    page.locator("#classes-0").get_by_label(NAMES[class_id], exact=True).uncheck()
    src, after = wait_for_new_overlay(page, src)
    region = labels == class_id
    assert np.array_equal(after[region], image[region])  # the class shows the image, its colour is gone
    assert np.array_equal(after[~region], before[~region])
    assert not (after == colour).all(-1).any()
    page.locator("#classes-0").get_by_label(NAMES[class_id], exact=True).check()
    _, again = wait_for_new_overlay(page, src)
    assert np.array_equal(again, before)


@pytest.mark.browser
def test_page_reports_non_images_and_keeps_serving(page, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello, not an image\n")
    upload(page, text)  # the page refuses it by type before sending it
    page.get_by_text("Invalid file type").first.wait_for()
    fake = tmp_path / "notes.png"
    fake.write_text("hello, not an image either\n")
    upload(page, fake)  # named like an image: the server reads it and says why not
    page.locator("#status", has_text="notes.png is not an image this page can read").wait_for()
    assert page.locator("#overlay-0 img").count() == 0
    upload(page, save(tmp_path / "fine.png", photo(seed=4)))  # the server still serves
    wait_for_new_overlay(page, None)
    page.locator("#status", has_text="fine.png: 128x96").wait_for()

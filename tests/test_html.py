"""Rendered-HTML checks of the smoke book: every page's images exist and load in a real
headless browser, no output cell shows an error, and figures keep the captions their notebook
gives them."""

import html
import json
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest
from PIL import Image

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: Jupyter Book 1 puts sphinx-thebe's configuration script twice in every page; the second
#: copy throws, before any content, and thebe (live code) is not used by this book.
KNOWN_THEME_ERRORS = ("Identifier 'THEBE_JS_URL' has already been declared",)
EXCEPTION_LINE = re.compile(r"^\w*(Error|Exception)\b.*:", re.M)
WINDOW = (1280, 2400)

# Collects what a page's checks need once the page has loaded: broken images, script errors
# and local files (images, scripts, styles) that failed to load. Remote ones are not counted:
# the book is checked offline.
PROBE = """<script>
window.__probeErrors = [];
window.addEventListener("error", (e) => {
  const url = e.target && e.target !== window && (e.target.src || e.target.href);
  if (url) { if (url.startsWith("file:")) window.__probeErrors.push("failed to load " + url); }
  else window.__probeErrors.push(String(e.message));
}, true);
window.addEventListener("load", () => {
  const broken = [...document.images]
    .filter((img) => !img.complete || img.naturalWidth === 0)
    .map((img) => img.getAttribute("src"));
  const out = document.createElement("pre");
  out.id = "html-probe";
  out.textContent = JSON.stringify(
    {images: document.images.length, broken, errors: window.__probeErrors});
  document.body.appendChild(out);
});
</script>"""


class PageParser(HTMLParser):
    """Image sources, error outputs and figure captions of one HTML page."""

    def __init__(self):
        super().__init__()
        self.images: list[str] = []
        self.outputs: list[tuple[str, str]] = []  # (class, text) of stderr/traceback outputs
        self.captions: list[str] = []
        self._open: list[list] = []  # [tag, kind, depth, text parts] being collected

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if tag == "img":
            self.images.append(attrs.get("src") or "")
        for item in self._open:
            if item[0] == tag:
                item[2] += 1
        if tag == "figcaption":
            self._open.append([tag, "caption", 1, []])
        elif tag == "div" and "output" in classes and {"stderr", "traceback"} & set(classes):
            self._open.append([tag, " ".join(classes), 1, []])

    def handle_endtag(self, tag):
        for item in list(self._open):
            if item[0] == tag:
                item[2] -= 1
                if item[2] == 0:
                    self._open.remove(item)
                    text = "".join(item[3])
                    if item[1] == "caption":
                        self.captions.append(text)
                    else:
                        self.outputs.append((item[1], text))

    def handle_data(self, data):
        for item in self._open:
            item[3].append(data)


def parse_page(page: Path) -> PageParser:
    parser = PageParser()
    parser.feed(page.read_text())
    return parser


def static_problems(page: Path) -> list[str]:
    """Missing or empty image files and error outputs, read from the HTML itself."""
    parsed = parse_page(page)
    problems = []
    for src in parsed.images:
        if src.startswith(("http:", "https:", "data:")):
            continue
        target = (page.parent / src.split("#")[0].split("?")[0]).resolve()
        if not target.is_file() or target.stat().st_size == 0:
            problems.append(f"{page.name}: image {src} is missing or empty")
    for classes, text in parsed.outputs:
        if "traceback" in classes or EXCEPTION_LINE.search(text):
            problems.append(f"{page.name}: error output ({classes}): {text.strip()[:300]}")
    if "Traceback (most recent call last)" in page.read_text():
        problems.append(f"{page.name}: a Python traceback is shown")
    return problems


def caption_key(markdown: str) -> str:
    """The plain start of a caption, comparable with the rendered text."""
    text = re.split(r"[{$]", markdown, maxsplit=1)[0]
    text = re.sub(r"[*_`]", "", text)
    return " ".join(text.split())[:40]


def defined_captions(nb: nbformat.NotebookNode) -> list[str]:
    """Captions a notebook gives its figures: ``{figure}``/``{glue:figure}`` blocks in markdown
    and ``mystnb``/``myst`` figure metadata of code cells."""
    captions = []
    for cell in nb.cells:
        if cell.cell_type == "code":
            for key in ("mystnb", "myst"):
                caption = cell.metadata.get(key, {}).get("figure", {}).get("caption")
                if caption:
                    captions.append(caption)
            continue
        for block in re.finditer(
            r"^(`{3,}|:{3,})\{(?:glue:)?figure\}[^\n]*\n(.*?)^\1", cell.source, re.S | re.M
        ):
            body = [ln for ln in block[2].splitlines() if ln.strip() and not ln.startswith(":")]
            if body:
                captions.append(body[0])
    return captions


def caption_problems(notebook: Path, page: Path) -> list[str]:
    rendered = [" ".join(c.split()) for c in parse_page(page).captions]
    wanted = [caption_key(c) for c in defined_captions(nbformat.read(notebook, as_version=4))]
    return [
        f"{page.name}: no figure caption starting {key!r}"
        for key in wanted
        if key and not any(key in text for text in rendered)
    ]


def find_browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def browser_problems(browser: str, page: Path, scratch: Path) -> list[str]:
    """Load a probed copy of the page (beside it, so relative links resolve) in headless
    Chromium, screenshot it, and report broken images and errors."""
    probed = page.with_name(f"_probe_{page.name}")
    source = page.read_text().replace(' loading="lazy"', "")
    probed.write_text(re.sub(r"<head[^>]*>", lambda m: m[0] + PROBE, source, count=1))
    shot = scratch / f"{page.stem}.png"
    cmd = [
        browser,
        "--headless",
        "--disable-gpu",
        "--no-sandbox",
        f"--user-data-dir={scratch / ('profile-' + page.stem)}",
        "--virtual-time-budget=10000",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        f"--screenshot={shot}",
        "--dump-dom",
        probed.as_uri(),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    finally:
        probed.unlink()
    found = re.search(r'<pre id="html-probe"[^>]*>(.*?)</pre>', proc.stdout, re.S)
    if proc.returncode != 0 or not found:
        return [f"{page.name}: the browser did not load the page ({proc.stderr[-500:]})"]
    probe = json.loads(html.unescape(found[1]))
    problems = [f"{page.name}: image {src} did not load" for src in probe["broken"]]
    problems += [
        f"{page.name}: {error}"
        for error in probe["errors"]
        if not any(known in error for known in KNOWN_THEME_ERRORS)
    ]
    if not shot.is_file():
        return [*problems, f"{page.name}: no screenshot"]
    darkest, lightest = Image.open(shot).convert("L").getextrema()
    if lightest - darkest < 50:
        problems.append(f"{page.name}: the screenshot is blank")
    return problems


def book_pages(smoke_book) -> list[Path]:
    pages = sorted((smoke_book.html / "book").glob("*.html"))
    assert {f"{r.chapter}.html" for r in smoke_book.runs} <= {p.name for p in pages}
    return pages


@pytest.mark.slow
def test_pages_have_their_images_and_no_error_output(smoke_book):
    pages = book_pages(smoke_book)
    assert sum(len(parse_page(p).images) for p in pages) > 10, "the book shows no figures"
    assert [problem for page in pages for problem in static_problems(page)] == []


@pytest.mark.slow
def test_figures_keep_the_captions_their_notebook_defines(smoke_book):
    problems = []
    for run in smoke_book.runs:
        notebook = smoke_book.build / "book" / f"{run.chapter}.ipynb"
        problems += caption_problems(notebook, smoke_book.html / "book" / f"{run.chapter}.html")
    assert problems == []


@pytest.mark.slow
def test_pages_render_in_a_headless_browser(smoke_book, tmp_path):
    browser = find_browser()
    if browser is None:
        pytest.skip("no chromium on PATH (.ci/run installs Debian's); browser checks skipped")
    pages = book_pages(smoke_book)
    with ThreadPoolExecutor(max_workers=3) as pool:
        found = pool.map(lambda page: browser_problems(browser, page, tmp_path), pages)
        problems = [problem for page_problems in found for problem in page_problems]
    assert problems == []


# The checks themselves, on a small page with each kind of fault.
FAULTY_PAGE = """<html><head></head><body>
<img src="_images/fine.png"><img src="_images/not_an_image.png"><img src="_images/gone.png">
<figure><img src="_images/fine.png"><figcaption><p>Spindle density per stage</p></figcaption>
</figure>
<div class="cell_output docutils container"><div class="output stderr highlight-myst-ansi">
<pre>ValueError: no channel EEG</pre></div></div>
</body></html>"""


@pytest.fixture
def faulty_page(tmp_path):
    (tmp_path / "_images").mkdir()
    Image.new("RGB", (8, 8), "red").save(tmp_path / "_images" / "fine.png")
    (tmp_path / "_images" / "not_an_image.png").write_text("this is not a PNG")
    page = tmp_path / "page.html"
    page.write_text(FAULTY_PAGE)
    return page


def test_static_checks_find_missing_images_and_error_outputs(faulty_page):
    problems = static_problems(faulty_page)
    assert problems == [
        "page.html: image _images/gone.png is missing or empty",
        "page.html: error output (output stderr highlight-myst-ansi): ValueError: no channel EEG",
    ]


def test_captions_defined_in_the_notebook_must_be_rendered(faulty_page, tmp_path):
    figure = "```{glue:figure} density\n:name: fig-density\nSpindle *density* per stage\n```"
    missing = "```{figure} _images/fine.png\nThe hypnogram of night 1\n```"
    cell = nbformat.v4.new_code_cell("x", metadata={"mystnb": {"figure": {"caption": "Alpha"}}})
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(figure + "\n\n" + missing)])
    nb.cells.append(cell)
    nbformat.write(nb, tmp_path / "page.ipynb")
    assert caption_problems(tmp_path / "page.ipynb", faulty_page) == [
        "page.html: no figure caption starting 'The hypnogram of night 1'",
        "page.html: no figure caption starting 'Alpha'",
    ]


def test_browser_check_finds_images_that_do_not_load(faulty_page, tmp_path):
    browser = find_browser()
    if browser is None:
        pytest.skip("no chromium on PATH (.ci/run installs Debian's); browser checks skipped")
    problems = browser_problems(browser, faulty_page, tmp_path)
    assert "page.html: image _images/not_an_image.png did not load" in problems
    assert "page.html: image _images/gone.png did not load" in problems
    assert not (tmp_path / "_probe_page.html").exists()

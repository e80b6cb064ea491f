"""Open every page of the built book in headless Chromium and check it like a reader would.

    python tests/browser/check_pages.py [--html _build/html] [--screenshots _build/screenshots]

The book is served from ``_build/html`` on 127.0.0.1 (a random free port) and every HTML page
is opened in Debian's headless Chromium through chromedriver (Selenium). On each page:

* **console**: no console message of level SEVERE. Chromium runs offline (no network in CI,
  and ``--host-resolver-rules`` makes every host but 127.0.0.1 unresolvable, so nothing
  hangs on DNS). Resources that a page may name on a third-party host but never needs
  (``EXTERNAL_OK``: widget bundles that myst-nb names) therefore fail to load; such a
  failure is reported as "offline" and does not fail the check. MathJax is served with the
  book, so a MathJax loaded from a CDN fails the check. Any other failed
  request -- a local file missing, or an unexpected third-party host -- and every
  JavaScript error fails the check.
  The browser's own request for ``/favicon.ico`` is not a page's resource and is ignored.
* **images**: every ``<img>`` has loaded with ``naturalWidth > 0`` (the page is scrolled
  through first, so lazy images load).
* **links**: every internal link (same origin) points to a file that exists under
  ``_build/html``, and its ``#anchor``, if any, is an ``id`` (or ``<a name>``) in that page.
* **overflow**: no code (a cell's source or a static block) or output is cut off on the
  right at 1280 px: every ``<pre>`` of a cell or a code block, and every output block, has
  ``scrollWidth <= clientWidth``.
* **text after load** (the page's DOM once MathJax has finished, read by :func:`text_findings`):
  no raw LaTeX left outside MathJax's output (``$$``, ``\\(``, ``\\[``, ``\\frac``,
  ``\\begin{``, ...; code and preformatted text are not read), no progress bar
  (``0%|``, as tqdm draws one) and no ``WARNING`` line in any cell output. The text of
  scripts and styles inside an output (the data of an interactive heatmap) is not read.
* **interactive heatmaps** (``hp_mini.viz.interactive``, ``div.hp-heatmap``): in each, the pointer
  hovers over one head's cell, then clicks another's, and after each the panel must show that
  head's label (``L{layer}H{head}``, as the cell's tooltip names it); see
  :func:`heatmap_failures`.

A full-page screenshot of each page goes to ``--screenshots`` (``book/03.html`` ->
``book__03.png``), and ``report.json`` beside them lists every page with its findings.
Exit status 1 when any page fails.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import re
import shutil
import sys
import tempfile
import threading
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlsplit

#: Third-party hosts the book loads on purpose; offline, their failures are reported, not fatal.
#: MathJax is not among them: the book serves its own copy (book/_ext/hp_book.py).
EXTERNAL_OK = {
    "cdnjs.cloudflare.com": "RequireJS for embedded widget state (myst-nb), unused when nb_ipywidgets_js is empty",
    "unpkg.com": "Jupyter widget bundles (myst-nb)",
}

CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-dev-shm-usage",
    "--disable-default-apps",
    "--disable-extensions",
    "--mute-audio",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]

WINDOW = (1280, 900)
MAX_SHOT_HEIGHT = 16000  # px; longer pages are cut there

SKIP_DIRS = {"_static", "_sources", "_images", "_sphinx_design_static", "_panels_static"}


# --------------------------------------------------------------------------- #
# Serving the book
# --------------------------------------------------------------------------- #


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - signature of the base class
        pass


def serve(root: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def pages_of(root: Path) -> list[Path]:
    return sorted(
        p for p in root.rglob("*.html") if not (set(p.relative_to(root).parts[:-1]) & SKIP_DIRS)
    )


# --------------------------------------------------------------------------- #
# Anchors of a page, read from the file
# --------------------------------------------------------------------------- #


class _Ids(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if value and (name == "id" or (tag == "a" and name == "name")):
                self.ids.add(value)


@functools.lru_cache(maxsize=None)
def anchors(path: Path) -> frozenset[str]:
    parser = _Ids()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return frozenset(parser.ids)


def resolve_local(root: Path, url_path: str) -> Path | None:
    """The file under ``root`` that serves ``url_path``, or None."""
    rel = unquote(url_path).lstrip("/")
    target = (root / rel).resolve()
    if not str(target).startswith(str(root.resolve())):
        return None
    if target.is_dir():
        target = target / "index.html"
    return target if target.is_file() else None


def check_links(root: Path, base: str, hrefs: list[str]) -> tuple[list[str], int]:
    """Broken internal links among ``hrefs`` (absolute URLs), and how many were checked."""
    problems, checked = [], 0
    origin = urlsplit(base).netloc
    for href in sorted(set(hrefs)):
        parts = urlsplit(href)
        if parts.scheme not in ("http", "https") or parts.netloc != origin:
            continue
        checked += 1
        url, fragment = urldefrag(href)
        target = resolve_local(root, urlsplit(url).path)
        if target is None:
            problems.append(f"link to a missing file: {href}")
            continue
        fragment = unquote(fragment)
        if fragment and target.suffix == ".html" and fragment not in anchors(target):
            problems.append(f"link to a missing anchor: {href}")
    return problems, checked


# --------------------------------------------------------------------------- #
# The browser
# --------------------------------------------------------------------------- #


def start_browser(chromium: str, chromedriver: str, profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    driver.set_window_size(*WINDOW)
    return driver


#: What Selenium reports when the browser itself died under a page (a renderer that crashed
#: or a lost connection), as opposed to a page that failed a check.
BROWSER_DEATHS = ("invalid session id", "disconnected", "chrome not reachable", "tab crashed",
                  "unable to receive message from renderer")


def browser_died(err: BaseException) -> bool:
    """Whether ``err`` says that the browser died, rather than that a page failed."""
    from selenium.common.exceptions import WebDriverException

    return isinstance(err, WebDriverException) and any(s in str(err).lower() for s in BROWSER_DEATHS)


class Browser:
    """A headless Chromium that is started afresh when it dies under a page.

    ``start`` returns a new driver. :meth:`run` calls ``action(driver)``; when the browser
    itself died (:func:`browser_died`), it says so on stderr, starts a fresh browser and calls
    ``action`` again, at most ``retries`` times. Any other error, a failed assertion
    included, is raised at once.
    """

    def __init__(self, start, retries: int = 1):
        self._start = start
        self.retries = retries
        self.restarts = 0
        self.driver = start()

    def run(self, action):
        for attempt in range(self.retries + 1):
            try:
                return action(self.driver)
            except Exception as err:
                if attempt == self.retries or not browser_died(err):
                    raise
                print(f"the browser died ({str(err).splitlines()[0]}); starting a fresh one", file=sys.stderr)
                self.quit()
                self.driver = self._start()
                self.restarts += 1
        raise AssertionError("unreachable")

    def quit(self) -> None:
        try:
            self.driver.quit()
        except Exception:  # a dead browser may refuse to quit; its process is gone either way
            pass


_IMAGES_JS = """
return Array.from(document.images).map(img => ({
    src: img.currentSrc || img.src, complete: img.complete, width: img.naturalWidth,
    alt: img.alt || ""}));
"""
_LINKS_JS = "return Array.from(document.querySelectorAll('a[href]')).map(a => a.href);"


def _wait_for_images(driver, timeout: float = 15.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        images = driver.execute_script(_IMAGES_JS)
        if all(i["complete"] for i in images) or time.monotonic() > deadline:
            return images
        time.sleep(0.2)


def _scroll_through(driver) -> None:
    """Scroll to the bottom and back, so that lazy images start loading."""
    driver.execute_script(
        "const h = document.documentElement.scrollHeight;"
        "for (let y = 0; y < h; y += 800) { window.scrollTo(0, y); }"
        "window.scrollTo(0, 0);"
    )


def _screenshot(driver, path: Path) -> None:
    """A full-page PNG: the window is made as tall as the document, then captured.

    (Capturing beyond the viewport instead misplaces the theme's sticky sidebars.)
    """
    width, height = WINDOW
    chrome = driver.execute_script("return window.outerHeight - window.innerHeight") or 0
    full = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(max(full, height), MAX_SHOT_HEIGHT) + chrome)
    time.sleep(0.3)
    try:
        driver.save_screenshot(str(path))
    finally:
        driver.set_window_size(width, height)


def classify_console(entries: list[dict], origin: str) -> tuple[list[str], list[str]]:
    """SEVERE console entries split into (failures, offline external resources)."""
    failures, offline = [], []
    for entry in entries:
        if entry.get("level") != "SEVERE":
            continue
        message = entry.get("message", "")
        source = entry.get("source", "")
        url = message.split(" ", 1)[0]
        host = urlsplit(url).hostname or ""
        if source == "network" and url == f"{origin}/favicon.ico":
            continue  # the browser's own request for a site icon, not a resource of the page
        if source == "network" and host and host != urlsplit(origin).hostname and host in EXTERNAL_OK:
            offline.append(f"{host} ({EXTERNAL_OK[host]}): {message}")
        else:
            failures.append(f"console {source or 'error'}: {message}")
    return failures, offline


# --------------------------------------------------------------------------- #
# What a reader sees: overflow, raw LaTeX, progress bars, warnings
# --------------------------------------------------------------------------- #

#: LaTeX that MathJax should have typeset; seen in a page's text it means math did not render.
RAW_LATEX = re.compile(
    r"\$\$|\\\(|\\\)|\\\[|\\\]|\\(?:frac|begin|end|mathbf|mathrm|text|sum|left|right|top|operatorname)\b"
)
#: A progress bar as tqdm draws it: "  0%|          | 0/10", or without a total
#: "Generating split: 145 examples [00:00, 678.15 examples/s]".
PROGRESS_BAR = re.compile(r"(?<![\w.])\d{1,3}%\||\[\d\d:\d\d[^\]]*/s\]")
#: A logged or issued warning: "WARNING:root: ...", "UserWarning: ...".
WARNING_LINE = re.compile(r"\bWARNING\b|\b[A-Z]\w*Warning:")

#: Elements whose text is not read for raw LaTeX: code, scripts, and MathJax's own output.
_NOT_PROSE = {"script", "style", "pre", "code", "kbd", "samp", "textarea", "noscript", "template",
              "svg", "math", "mjx-container", "mjx-assistive-mml"}
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param",
         "source", "track", "wbr"}


class _PageText(HTMLParser):
    """Prose text (outside ``_NOT_PROSE``) and the text of every cell output block."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, bool, bool]] = []  # (tag, not prose, starts an output)
        self.prose: list[str] = []
        self.outputs: list[list[str]] = []

    def _in(self, index: int) -> bool:
        return any(entry[index] for entry in self.stack)

    def handle_starttag(self, tag, attrs):
        if tag in _VOID:
            return
        classes = (dict(attrs).get("class") or "").split()
        starts_output = "cell_output" in classes and not self._in(2)
        if starts_output:
            self.outputs.append([])
        self.stack.append((tag, tag in _NOT_PROSE, starts_output))

    def handle_startendtag(self, tag, attrs):
        pass

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                del self.stack[i:]
                return

    def handle_data(self, data):
        if any(entry[0] in ("script", "style") for entry in self.stack):
            if self._in(2):
                return  # a script's code or data in an output is not shown to the reader
        if self._in(2):
            self.outputs[-1].append(data)
        elif not self._in(1):
            self.prose.append(data)


def _excerpt(text: str, match: re.Match, width: int = 40) -> str:
    start, end = max(match.start() - width, 0), min(match.end() + width, len(text))
    return " ".join(text[start:end].split())


def text_findings(html: str) -> list[str]:
    """Failures found in the text of a page's DOM (as it is once scripts and MathJax ran).

    * raw LaTeX (``RAW_LATEX``) in prose, that is outside code, scripts and MathJax output;
    * a progress bar (``PROGRESS_BAR``) in a cell output;
    * a line with ``WARNING`` or ``...Warning:`` (``WARNING_LINE``) in a cell output.
    """
    parser = _PageText()
    parser.feed(html)
    parser.close()
    failures = []
    prose = "".join(parser.prose)
    for match in RAW_LATEX.finditer(prose):
        failures.append(f"raw LaTeX after load: {match.group(0)!r} in ...{_excerpt(prose, match)}...")
    for n, chunks in enumerate(parser.outputs, start=1):
        for line in "".join(chunks).splitlines():
            if PROGRESS_BAR.search(line):
                failures.append(f"progress bar in output {n}: {line.strip()[:120]}")
            if WARNING_LINE.search(line):
                failures.append(f"warning in output {n}: {line.strip()[:120]}")
    return failures


#: Every cell's ``<pre>`` (source and output), every static code block's, every output block, and every element of an output
#: that scrolls or clips horizontally (a wide table in an ``overflow-x: auto`` box), measured at
#: the window width.
_OVERFLOW_JS = """
const seen = new Set(), found = [];
const scrolls = el => ['auto', 'scroll', 'hidden'].includes(getComputedStyle(el).overflowX);
const blocks = [
    ...document.querySelectorAll('div.cell pre, div.highlight pre, div.cell_output > div.output'),
    ...Array.from(document.querySelectorAll('div.cell_output *')).filter(scrolls)];
for (const el of blocks) {
    if (seen.has(el)) continue;
    seen.add(el);
    found.push({
        where: el.closest('.cell_output') ? 'output' : 'code',
        scrollWidth: el.scrollWidth, clientWidth: el.clientWidth,
        text: (el.innerText || '').trim().split('\\n').reduce(
            (a, b) => (b.length > a.length ? b : a), '').slice(0, 100)});
}
return found;
"""

#: Resolves once MathJax 3 has typeset the page (or at once where the page has no MathJax).
_MATHJAX_JS = """
const done = arguments[arguments.length - 1];
const mj = window.MathJax;
if (mj && mj.startup && mj.startup.promise) {
    mj.startup.promise.then(() => done('typeset'), err => done('error: ' + err));
} else {
    done(mj ? 'not loaded' : 'none');
}
"""


def overflow_failures(blocks: list[dict], slack: int = 1) -> list[str]:
    """Blocks (from ``_OVERFLOW_JS``) whose content is wider than the block: cut off on the right."""
    failures = []
    for block in blocks:
        if block["scrollWidth"] > block["clientWidth"] + slack:
            failures.append(
                f"{block['where']} cut off at {WINDOW[0]} px ({block['scrollWidth']} px of content in "
                f"{block['clientWidth']} px): {block['text']!r}"
            )
    return failures


# --------------------------------------------------------------------------- #
# Interactive heatmaps: hovering or clicking a head shows it
# --------------------------------------------------------------------------- #

#: A head's label as the book writes it (zero-indexed layer and head).
HEAD_LABEL = re.compile(r"L\d+H\d+")

#: The label each cell of a heatmap names in its tooltip (``"L3H4: EVR 0.412 ..."``).
_CELL_LABELS_JS = """
return Array.from(arguments[0].querySelectorAll('svg rect[data-i]')).map(
    r => ((r.querySelector('title') || {}).textContent || '').split(':')[0].trim());
"""
_PANEL_LABEL_JS = """
const panel = arguments[0].querySelector('.hp-heatmap-panel');
if (!panel) return null;
const label = panel.querySelector('.hp-heatmap-label');
return label ? label.textContent.trim() : '(no label) ' + panel.textContent.trim().slice(0, 80);
"""


def panel_problem(expected: str, shown: str | None) -> str | None:
    """Why a heatmap's panel, showing ``shown`` after the reader pointed at ``expected``, is wrong
    (None when it shows that head's label)."""
    if shown is None:
        return "the heatmap has no panel"
    if not HEAD_LABEL.fullmatch(shown):
        return f"the panel shows {shown!r}, not a head label"
    if shown != expected:
        return f"the panel shows {shown}, not {expected}"
    return None


def heatmap_failures(driver) -> list[str]:
    """Hover over one cell of every interactive heatmap, then click another: after each, the
    panel must show the label of the head under the pointer."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    failures = []
    for n, heatmap in enumerate(driver.find_elements(By.CSS_SELECTOR, "div.hp-heatmap"), start=1):
        cells = heatmap.find_elements(By.CSS_SELECTOR, "svg rect[data-i]")
        labels = driver.execute_script(_CELL_LABELS_JS, heatmap)
        if not cells or not all(HEAD_LABEL.fullmatch(label) for label in labels):
            failures.append(f"interactive heatmap {n}: no cells, or cells whose tooltip names no head")
            continue
        before = driver.execute_script(_PANEL_LABEL_JS, heatmap)
        # Two heads other than the one shown at first: the last cell and one further up.
        others = [i for i in (len(cells) - 1, len(cells) // 4, 0) if labels[i] != before]
        for action, i in zip(("hover", "click"), others):
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", cells[i])
            chain = ActionChains(driver).move_to_element(cells[i])
            (chain.click() if action == "click" else chain).perform()
            problem = panel_problem(labels[i], driver.execute_script(_PANEL_LABEL_JS, heatmap))
            if problem:
                failures.append(f"interactive heatmap {n}: after a {action} on {labels[i]}, {problem}")
    driver.execute_script("window.scrollTo(0, 0)")
    return failures


def check_page(driver, root: Path, base: str, page: Path, shots: Path) -> dict:
    rel = page.relative_to(root).as_posix()
    url = f"{base}/{rel}"
    driver.get_log("browser")  # drop what the previous page left
    driver.get(url)
    driver.execute_script("return document.readyState")  # page loaded (get() waits for load)
    _scroll_through(driver)
    images = _wait_for_images(driver)
    time.sleep(1.0)  # let late scripts report their errors and the layout settle
    mathjax = driver.execute_async_script(_MATHJAX_JS)
    console = driver.get_log("browser")
    failures, offline = classify_console(console, base)
    if mathjax.startswith("error"):
        failures.append(f"MathJax: {mathjax}")
    failures += overflow_failures(driver.execute_script(_OVERFLOW_JS))
    failures += text_findings(driver.execute_script("return document.documentElement.outerHTML"))
    failures += heatmap_failures(driver)
    # Script errors raised by the hovers and clicks fail the page too.
    more, more_offline = classify_console(driver.get_log("browser"), base)
    failures += more
    offline += more_offline
    for img in images:
        if not (img["complete"] and img["width"] > 0):
            failures.append(f"image not rendered (naturalWidth={img['width']}): {img['src'][:120]} alt={img['alt']!r}")
    link_problems, n_links = check_links(root, base, driver.execute_script(_LINKS_JS))
    failures += link_problems
    shot = shots / (rel[: -len(".html")].replace("/", "__") + ".png")
    _screenshot(driver, shot)
    return {
        "page": rel,
        "ok": not failures,
        "failures": failures,
        "offline_external": offline,
        "images": len(images),
        "internal_links": n_links,
        "screenshot": str(shot),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--html", default="_build/html", type=Path, help="the built book (default _build/html)")
    parser.add_argument("--screenshots", default="_build/screenshots", type=Path)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    parser.add_argument("--pages", nargs="*", help="only these pages (paths relative to --html)")
    args = parser.parse_args(argv)

    root = args.html.resolve()
    if not (root / "index.html").exists() and not any(root.glob("*.html")):
        print(f"no built book in {root}: build it first (make book)", file=sys.stderr)
        return 2
    pages = [root / p for p in args.pages] if args.pages else pages_of(root)
    args.screenshots.mkdir(parents=True, exist_ok=True)
    server, base = serve(root)
    profile = Path(tempfile.mkdtemp(prefix="hp_mini_chromium_"))
    browser = Browser(functools.partial(start_browser, args.chromium, args.chromedriver, profile))
    results = []
    try:
        for page in pages:
            try:
                result = browser.run(lambda driver: check_page(driver, root, base, page, args.screenshots))  # noqa: B023
            except Exception as err:  # a page that breaks the checker is a failed page
                result = {"page": page.relative_to(root).as_posix(), "ok": False,
                          "failures": [f"{type(err).__name__}: {err}"], "offline_external": []}
            results.append(result)
            status = "ok  " if result["ok"] else "FAIL"
            extra = f" ({len(result['offline_external'])} offline external)" if result["offline_external"] else ""
            print(f"{status} {result['page']}{extra}")
            for failure in result["failures"]:
                print(f"       {failure}")
    finally:
        browser.quit()
        server.shutdown()
        shutil.rmtree(profile, ignore_errors=True)

    (args.screenshots / "report.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    failed = [r for r in results if not r["ok"]]
    offline = sorted({o.split(":", 1)[0] for r in results for o in r["offline_external"]})
    print(f"\n{len(results)} pages checked, {len(failed)} failed; screenshots and report.json in {args.screenshots}")
    if offline:
        print("external resources not loaded (offline; see EXTERNAL_OK): " + "; ".join(offline))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

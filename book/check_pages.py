"""Look at the built book in a real browser, as a reader would, and fail on what a reader would notice.

Opens the landing page, every page listed in book/_toc.yml and the search page in headless Chromium (Debian's
``chromium`` package), driven by Playwright for Python (``pip install playwright``; it launches that binary, no browser
download). For each page it waits until the page has loaded,
MathJax has finished typesetting and every image has loaded or failed, then checks:

- math: every ``.math`` element was typeset by MathJax, no MathJax error box, and no raw TeX (``\\(`` ``\\)``
  ``\\[`` ``\\]`` ``$$`` ``\\begin{``) is left in the visible text outside code;
- images: every ``<img>`` loaded (``naturalWidth > 0``), plots included;
- exercises: every solution is collapsed;
- offline: the page requested nothing from another host, and no file of the book failed to load (the book is
  served from 127.0.0.1 by the script itself);
- no uncaught JavaScript error;
- dark mode: output images keep a white background when the theme is switched to dark;
- search (search.html?q=...): finds results offline.

It saves screenshots (top of each page; for chapters also the exercises and a plot in dark mode) to --out,
outside the repository by default, so that a person can look at them.

    python book/check_pages.py                       # checks book/_build/html; build the book first
    python book/check_pages.py --install-chromium    # apt-get install chromium first if it is missing (CI)
    python book/check_pages.py --pages intro notebooks/01_world --out /tmp/shots

Exit status 1 when a check fails, 2 when Chromium or Playwright is missing.
"""
import argparse
import functools
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

BOOK = Path(__file__).resolve().parent
WIDTH, HEIGHT = 1280, 1600
SEARCH_QUERY = "LoRA"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--no-default-browser-check", "--disable-default-apps",
         "--disable-extensions"]

# Runs in the page once it has loaded: waits for MathJax and the images, then reports what a reader would see.
INSPECT_JS = r"""
async () => {
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  for (let i = 0; i < 100 && !(window.MathJax && MathJax.startup && MathJax.startup.promise)
       && document.querySelector('.math'); i++) await sleep(100);
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
  await Promise.all([...document.images].map(img => img.complete ? null :
      new Promise(r => { img.addEventListener('load', r); img.addEventListener('error', r); })));
  await sleep(300);  // togglebutton and the theme run on DOMContentLoaded; give layout a moment

  const main = document.querySelector('main') || document.body;
  const maths = [...main.querySelectorAll('.math')];
  const untypeset = maths.filter(m => !m.querySelector('mjx-container')).map(m => m.textContent.trim().slice(0, 80));
  const merrors = [...main.querySelectorAll('mjx-merror')].map(e => e.textContent.slice(0, 80));

  const SKIP = new Set(['SCRIPT', 'STYLE', 'PRE', 'CODE', 'TEXTAREA', 'MJX-CONTAINER', 'NOSCRIPT']);
  const TEX = /\\\(|\\\)|\\\[|\\\]|\$\$|\\begin\{/;
  const rawTex = [];
  const walker = document.createTreeWalker(main, NodeFilter.SHOW_TEXT, {
    acceptNode(node) {
      for (let el = node.parentElement; el && el !== main.parentElement; el = el.parentElement)
        if (SKIP.has(el.tagName)) return NodeFilter.FILTER_REJECT;
      return TEX.test(node.textContent) ? NodeFilter.FILTER_ACCEPT : NodeFilter.FILTER_SKIP;
    }
  });
  while (walker.nextNode() && rawTex.length < 5) rawTex.push(walker.currentNode.textContent.trim().slice(0, 80));

  const images = [...document.images];
  const broken = images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src'));
  const plots = [...main.querySelectorAll('.cell_output img, figure img')];

  const solutions = [...main.querySelectorAll('.solution, details.dropdown')];
  const open = solutions.filter(s => s.tagName === 'DETAILS' ? s.open : !s.classList.contains('toggle-hidden'))
                        .map(s => (s.querySelector('.admonition-title, summary') || s).textContent.trim().slice(0, 60));
  const y = el => el ? Math.max(0, el.getBoundingClientRect().top + window.scrollY - 80) : null;
  const exercise = main.querySelector('.exercise');
  const exerciseSection = exercise ? (exercise.closest('section') || exercise) : null;
  return {
    title: document.title,
    theme: document.documentElement.dataset.theme || null,
    math: maths.length, untypeset, merrors, rawTex,
    images: images.length, broken, plots: plots.length,
    exercises: main.querySelectorAll('.exercise').length, solutions: solutions.length, open,
    exerciseY: exerciseSection ? y(exerciseSection.querySelector('h2, h3') || exerciseSection) : null,
    plotY: plots.length ? y(plots[0]) : null,
    height: document.documentElement.scrollHeight,
  };
}
"""

# Switch the theme the way its toggle button does, then report the background behind the output images.
DARK_JS = r"""
async () => {
  document.documentElement.dataset.theme = 'dark';
  document.documentElement.dataset.mode = 'dark';
  await new Promise(r => setTimeout(r, 300));
  const plots = [...document.querySelectorAll('main .cell_output img, main figure img')];
  return plots.map(i => getComputedStyle(i).backgroundColor);
}
"""

SEARCH_JS = r"""
async () => {
  for (let i = 0; i < 150; i++) {  // Sphinx writes "Search finished, found N page(s)..." when it is done
    const status = document.querySelector('#search-results .search-summary, #search-results p');
    const m = status && status.textContent.match(/found (\d+) page|did not match/i);
    if (m) return m[1] ? parseInt(m[1]) : 0;
    await new Promise(r => setTimeout(r, 100));
  }
  return -1;
}
"""


class Browser:
    """One tab of a headless Chromium driven by Playwright, recording what a reader would notice."""

    def __init__(self, playwright, binary: str, local: str):
        self.local = local  # the origin of the local server: requests to it stay on the machine
        self.browser = playwright.chromium.launch(executable_path=binary, headless=True, args=FLAGS)
        self.page = self.browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
        self.page.set_default_timeout(60_000)
        self.problems: list[str] = []
        self.page.on("request", self._on_request)
        self.page.on("response", self._on_response)
        self.page.on("requestfailed", self._on_failed)
        self.page.on("pageerror", lambda error: self.problems.append(
            f"uncaught JavaScript error: {str(error).splitlines()[0][:160]}"))

    def _on_request(self, request) -> None:
        url = request.url
        if url.startswith(("http://", "https://")) and not url.startswith(self.local + "/"):
            self.problems.append(f"requested {url} (the book must work offline)")

    def _on_response(self, response) -> None:
        if response.status >= 400 and not response.url.endswith("/favicon.ico"):  # asked for by the browser
            self.problems.append(f"HTTP {response.status} for {response.url} (a file missing from the build?)")

    def _on_failed(self, request) -> None:
        error = request.failure or "?"
        if "ERR_ABORTED" not in error:  # a request the page itself cancelled
            self.problems.append(f"failed to load {request.url}: {error}")

    def goto(self, url: str) -> None:
        self.page.goto(url, wait_until="load")

    def evaluate(self, js: str):
        return self.page.evaluate(js)

    def screenshot(self, path: Path, y: float = 0) -> None:
        """What a reader sees after scrolling to ``y``: the viewport, sticky header included."""
        self.page.evaluate(f"window.scrollTo(0, {max(0, y)})")
        self.page.wait_for_timeout(250)
        self.page.screenshot(path=path)

    def drain_problems(self) -> list[str]:
        """Network requests that left the machine, local files that failed to load, uncaught JS errors."""
        self.page.wait_for_timeout(200)  # let late events arrive
        problems, self.problems = self.problems, []
        return problems

    def close(self) -> None:
        self.browser.close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve(html: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Serve the built book on 127.0.0.1 (as a web host would; Sphinx's search fetches page summaries, which
    browsers refuse over file://). Nothing leaves the machine."""
    handler = functools.partial(_QuietHandler, directory=str(html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def find_chromium(install: bool) -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    if install:
        print("check_pages: installing Debian's chromium package (apt-get)...", flush=True)
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True)
        subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"],
                       check=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        return shutil.which("chromium")
    return None


def toc_pages() -> list[str]:
    """The root page and every enabled file of _toc.yml, in reading order."""
    toc = yaml.safe_load((BOOK / "_toc.yml").read_text())
    pages = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                pages.append(node["file"])
            for key in ("parts", "chapters", "sections"):
                walk(node.get(key))
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc)
    return pages


def check_page(browser: Browser, html: Path, base: str, page: str, out: Path,
               dark_shot: bool) -> tuple[list[str], str]:
    file = html / f"{page}.html"
    if not file.is_file():
        return [f"{file} does not exist (is the book built?)"], ""
    browser.goto(f"{base}/{page}.html")
    info = browser.evaluate(INSPECT_JS)
    problems = browser.drain_problems()
    if info["untypeset"]:
        problems.append(f"{len(info['untypeset'])} formula(s) not typeset by MathJax, e.g. {info['untypeset'][:2]}")
    if info["merrors"]:
        problems.append(f"MathJax errors: {info['merrors'][:3]}")
    if info["rawTex"]:
        problems.append(f"raw TeX in the text: {info['rawTex'][:3]}")
    if info["broken"]:
        problems.append(f"{len(info['broken'])} image(s) did not load: {info['broken'][:3]}")
    if info["open"]:
        problems.append(f"solution(s) not collapsed: {info['open'][:3]}")

    name = page.replace("/", "--")
    browser.screenshot(out / f"{name}.png")
    shots = [f"{name}.png"]
    if info["exerciseY"] is not None:
        browser.screenshot(out / f"{name}--exercises.png", info["exerciseY"])
        shots.append(f"{name}--exercises.png")
    if dark_shot or info["plots"]:
        backgrounds = browser.evaluate(DARK_JS)
        not_white = [b for b in backgrounds if b not in ("rgb(255, 255, 255)", "rgba(255, 255, 255, 1)")]
        if not_white:
            problems.append(f"in dark mode {len(not_white)} output image(s) lose their white background: {not_white[:2]}")
        browser.screenshot(out / f"{name}--dark.png", info["plotY"] or 0)
        shots.append(f"{name}--dark.png")
    problems += browser.drain_problems()
    summary = (f"{info['math']} formulas, {info['images']} images ({info['plots']} plots), "
               f"{info['exercises']} exercises, {info['solutions'] - len(info['open'])}/{info['solutions']} solutions collapsed; shots: {', '.join(shots)}")
    return problems, summary


def check_search(browser: Browser, base: str, out: Path) -> tuple[list[str], str]:
    browser.goto(f"{base}/search.html?q={SEARCH_QUERY}")
    found = browser.evaluate(SEARCH_JS)
    problems = browser.drain_problems()
    browser.screenshot(out / "search.png")
    if found is None or found <= 0:
        problems.append(f"searching for {SEARCH_QUERY!r} found nothing (search index missing or broken?)")
    return problems, f"{found} result(s) for {SEARCH_QUERY!r}; shot: search.png"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--html", type=Path, default=BOOK / "_build" / "html", help="the built book")
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "minimal-loramoe-book-screenshots",
                   help="where to save the screenshots (keep them out of the repository)")
    p.add_argument("--pages", nargs="*", help="page names like intro notebooks/01_world (default: the toc)")
    p.add_argument("--install-chromium", action="store_true", help="apt-get install chromium if it is missing")
    args = p.parse_args(argv)

    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("check_pages: Playwright not found: pip install playwright (no browser download needed).")
        return 2
    binary = find_chromium(args.install_chromium)
    if binary is None:
        print("check_pages: Chromium not found. Install Debian's package (apt-get install chromium) or run with "
              "--install-chromium.")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    pages = args.pages or toc_pages()
    start, failures = time.time(), 0
    server, base = serve(args.html)
    playwright = sync_playwright().start()
    browser = Browser(playwright, binary, local=base)
    try:
        for page in pages:
            t0 = time.time()
            problems, summary = check_page(browser, args.html, base, page, args.out, dark_shot=(page == pages[0]))
            failures += bool(problems)
            print(f"check_pages: {'FAIL' if problems else 'ok  '} {page} ({time.time() - t0:.1f} s): {summary}")
            for problem in problems:
                print(f"check_pages:      {problem}")
        if not args.pages:
            problems, summary = check_search(browser, base, args.out)
            failures += bool(problems)
            print(f"check_pages: {'FAIL' if problems else 'ok  '} search: {summary}")
            for problem in problems:
                print(f"check_pages:      {problem}")
    finally:
        browser.close()
        playwright.stop()
        server.shutdown()
    print(f"check_pages: {len(pages)} pages in {time.time() - start:.0f} s, {failures} failing; "
          f"screenshots in {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

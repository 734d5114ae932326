"""Look at the built book in a real browser, as a reader would, and fail on what a reader would notice.

Opens the landing page, every page listed in book/_toc.yml and the search page in headless Chromium (Debian's
``chromium`` package), driven over the DevTools protocol. For each page it waits until the page has loaded,
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

Exit status 1 when a check fails, 2 when Chromium is missing.
"""
import argparse
import base64
import functools
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import yaml

BOOK = Path(__file__).resolve().parent
WIDTH, HEIGHT = 1280, 1600
SEARCH_QUERY = "LoRA"

# Runs in the page once it has loaded: waits for MathJax and the images, then reports what a reader would see.
INSPECT_JS = r"""
(async () => {
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
})()
"""

# Switch the theme the way its toggle button does, then report the background behind the output images.
DARK_JS = r"""
(async () => {
  document.documentElement.dataset.theme = 'dark';
  document.documentElement.dataset.mode = 'dark';
  await new Promise(r => setTimeout(r, 300));
  const plots = [...document.querySelectorAll('main .cell_output img, main figure img')];
  return plots.map(i => getComputedStyle(i).backgroundColor);
})()
"""

SEARCH_JS = r"""
(async () => {
  for (let i = 0; i < 150; i++) {  // Sphinx writes "Search finished, found N page(s)..." when it is done
    const status = document.querySelector('#search-results .search-summary, #search-results p');
    const m = status && status.textContent.match(/found (\d+) page|did not match/i);
    if (m) return m[1] ? parseInt(m[1]) : 0;
    await new Promise(r => setTimeout(r, 100));
  }
  return -1;
})()
"""


class Browser:
    """A headless Chromium driven over the DevTools protocol (one tab)."""

    def __init__(self, binary: str, local: str):
        import websocket  # websocket-client, installed with jupyter_server

        self.local = local  # the origin of the local server: requests to it stay on the machine
        self.profile = tempfile.mkdtemp(prefix="check-pages-chromium-")
        self.log = open(Path(self.profile) / "stderr.log", "w+")
        flags = [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
            "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-extensions",
            "--remote-debugging-port=0", "--remote-allow-origins=*", f"--user-data-dir={self.profile}",
            f"--window-size={WIDTH},{HEIGHT}", "about:blank",
        ]
        # Its own process group, so that close() ends exactly the processes started here.
        self.proc = subprocess.Popen([binary, *flags], stdout=subprocess.DEVNULL, stderr=self.log,
                                     start_new_session=True)
        port = self._port()
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self._id, self.events = 0, []
        for domain in ("Page", "Runtime", "Network"):
            self.call(f"{domain}.enable")

    def _port(self) -> int:
        deadline = time.time() + 60
        while time.time() < deadline:
            self.log.seek(0)
            for line in self.log:
                if "DevTools listening on ws://" in line:
                    return int(line.split("ws://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        self.log.seek(0)
        raise RuntimeError("Chromium did not start:\n" + self.log.read()[-2000:])

    def call(self, method: str, **params):
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_for(self, event: str, timeout: float = 60):
        deadline = time.time() + timeout
        for i, msg in enumerate(self.events):
            if msg.get("method") == event:
                return self.events.pop(i)
        while time.time() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("method") == event:
                return msg
            self.events.append(msg)
        raise TimeoutError(event)

    def evaluate(self, js: str):
        result = self.call("Runtime.evaluate", expression=js, awaitPromise=True, returnByValue=True, timeout=60000)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def goto(self, url: str) -> None:
        self.events.clear()
        self.call("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")

    def screenshot(self, path: Path, y: float = 0) -> None:
        """What a reader sees after scrolling to ``y``: the viewport, sticky header included."""
        self.evaluate(f"(async () => {{ window.scrollTo(0, {max(0, y)}); await new Promise(r => setTimeout(r, 250)); }})()")
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def drain_problems(self) -> list[str]:
        """Network requests that left the machine, local files that failed to load, uncaught JS errors."""
        try:  # collect what arrived after the last call
            self.ws.settimeout(0.2)
            while True:
                self.events.append(json.loads(self.ws.recv()))
        except Exception:
            pass
        finally:
            self.ws.settimeout(60)
        problems, urls = [], {}
        for msg in self.events:
            method, p = msg.get("method"), msg.get("params", {})
            if method == "Network.requestWillBeSent":
                url = p["request"]["url"]
                urls[p["requestId"]] = url
                if url.startswith(("http://", "https://")) and not url.startswith(self.local + "/"):
                    problems.append(f"requested {url} (the book must work offline)")
            elif (method == "Network.responseReceived" and p["response"].get("status", 200) >= 400
                  and not p["response"]["url"].endswith("/favicon.ico")):  # asked for by the browser, not the page
                problems.append(f"HTTP {p['response']['status']} for {p['response']['url']} (a file missing from the build?)")
            elif method == "Network.loadingFailed" and not p.get("canceled"):
                problems.append(f"failed to load {urls.get(p['requestId'], '?')}: {p.get('errorText')}")
            elif method == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                text = d.get("exception", {}).get("description") or d.get("text")
                problems.append(f"uncaught JavaScript error: {str(text).splitlines()[0][:160]}")
        self.events.clear()
        return problems

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)
        except Exception:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except Exception:
                pass
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)


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

    binary = find_chromium(args.install_chromium)
    if binary is None:
        print("check_pages: Chromium not found. Install Debian's package (apt-get install chromium) or run with "
              "--install-chromium.")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    pages = args.pages or toc_pages()
    start, failures = time.time(), 0
    server, base = serve(args.html)
    browser = Browser(binary, local=base)
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
        server.shutdown()
    print(f"check_pages: {len(pages)} pages in {time.time() - start:.0f} s, {failures} failing; "
          f"screenshots in {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

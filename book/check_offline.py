"""Check that the built book loads nothing from the network.

Every page must work offline: no ``<script>``, stylesheet, font, image, iframe or media element may point at an
``http(s)://`` (or protocol-relative ``//``) URL, and no CSS file or ``<style>`` block may pull a font or an
import from one. Plain links (``<a href>``) are fine: they are only followed when the reader clicks them.

    python book/check_offline.py [book/_build/html]

Exits 1 and lists every offending element when there is one.
"""
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

EXTERNAL = re.compile(r"^\s*(https?:)?//", re.IGNORECASE)
CSS_EXTERNAL = re.compile(r"""(url\(\s*['"]?|@import\s+(url\(\s*)?['"]?)\s*(https?:)?//""", re.IGNORECASE)
# (tag, attribute) pairs whose URL the browser fetches by itself while loading the page.
LOADED = {
    ("script", "src"), ("img", "src"), ("img", "srcset"), ("iframe", "src"), ("embed", "src"),
    ("source", "src"), ("source", "srcset"), ("video", "src"), ("video", "poster"), ("audio", "src"),
    ("track", "src"), ("object", "data"), ("input", "src"),
}
# <link rel=...> values that make the browser fetch the target.
LOADED_LINK_RELS = {"stylesheet", "preload", "modulepreload", "prefetch", "icon", "shortcut", "apple-touch-icon",
                    "manifest", "preconnect", "dns-prefetch"}


class _Scanner(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name, value in attrs.items():
            if value and (tag, name) in LOADED and EXTERNAL.match(value):
                self.problems.append(f"<{tag} {name}={value!r}>")
        if tag == "link":
            rels = set((attrs.get("rel") or "").lower().split())
            href = attrs.get("href") or ""
            if rels & LOADED_LINK_RELS and EXTERNAL.match(href):
                self.problems.append(f"<link rel={attrs.get('rel')!r} href={href!r}>")
        style = attrs.get("style") or ""
        if CSS_EXTERNAL.search(style):
            self.problems.append(f"<{tag} style={style[:120]!r}>")
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        if tag == "style":
            self._in_style = False

    def handle_data(self, data):
        if self._in_style and CSS_EXTERNAL.search(data):
            self.problems.append(f"<style> pulls {CSS_EXTERNAL.search(data).group(0)!r}...")


def check(html_dir: Path) -> list[str]:
    problems = []
    pages = sorted(html_dir.rglob("*.html"))
    if not pages:
        return [f"no HTML pages under {html_dir}: build the book first"]
    for page in pages:
        scanner = _Scanner()
        scanner.feed(page.read_text(encoding="utf-8", errors="replace"))
        problems += [f"{page.relative_to(html_dir)}: {p}" for p in scanner.problems]
    for css in sorted(html_dir.rglob("*.css")):
        for m in CSS_EXTERNAL.finditer(css.read_text(encoding="utf-8", errors="replace")):
            problems.append(f"{css.relative_to(html_dir)}: CSS pulls {m.group(0)!r}...")
    return problems


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    html_dir = Path(args[0]) if args else Path(__file__).resolve().parent / "_build" / "html"
    problems = check(html_dir)
    for p in problems:
        print(f"check_offline: {p}")
    n = len(list(html_dir.rglob("*.html")))
    print(f"check_offline: {n} pages, {len(problems)} external resources" + (" -- FAILED" if problems else " -- ok"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

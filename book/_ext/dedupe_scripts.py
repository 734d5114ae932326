"""Drop repeated <script> tags from every page.

sphinx-thebe (loaded by jupyter-book even with Thebe switched off) registers its inline settings twice, so each
page declares ``const THEBE_JS_URL`` twice and the browser reports "Uncaught SyntaxError: Identifier
'THEBE_JS_URL' has already been declared". book/check_pages.py fails on uncaught page errors, so we remove the
exact duplicates (same file, same attributes, same inline body) and keep the first of each.
"""
from sphinx.application import Sphinx


def _key(script) -> tuple:
    attributes = getattr(script, "attributes", {}) or {}
    return str(getattr(script, "filename", None) or ""), tuple(sorted((k, str(v)) for k, v in attributes.items()))


def on_page_context(app: Sphinx, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        key = _key(script)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app: Sphinx) -> dict:
    app.connect("html-page-context", on_page_context, priority=900)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}

#!/usr/bin/env bash
# Build the book as CI does, from the saved notebook outputs, with no network:
#   1. book/_toc.yml is in step with notebooks/ (a chapter notebook that is not in the book fails),
#   2. every chapter notebook follows the book's rules (executed in order, Colab first cell, graded exercises
#      with folded solutions, nothing loaded from the network),
#   3. jupyter-book builds every page with warnings as errors (-W) and nitpicky cross-references (-n),
#      reporting all problems at once (--keep-going); --all so that no page is skipped as "unchanged",
#   4. the built HTML loads no script, stylesheet, font or image from an http(s) URL.
# Usage: .ci/build_book.sh [--check-pages]
#   --check-pages  also open every page in headless Chromium (book/check_pages.py, driven by Playwright; installs
#                  Playwright with pip and Debian's chromium with apt-get if they are missing, no browser download)
#                  and save screenshots outside the repository.
set -euo pipefail
cd "$(dirname "$0")/.."

start=$(date +%s)
python book/sync_toc.py --check
python book/lint_chapters.py --strict   # teaching notes (captions, runnable solutions, Time line) fail too
jupyter-book build book --all -n -W --keep-going
python book/check_offline.py book/_build/html
echo "build_book: book built and checked in $(( $(date +%s) - start )) s -> book/_build/html/index.html"

if [[ "${1:-}" == "--check-pages" ]]; then
  python -c "import playwright" 2>/dev/null || python -m pip install -q playwright==1.65.2
  python book/check_pages.py --install-chromium
fi

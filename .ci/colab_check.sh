#!/usr/bin/env bash
# The Colab path, up to the URL: a reader who has only `pip install "minimal-loramoe @ git+<URL>"` and a chapter
# notebook. Builds the wheel, installs it into a fresh virtual environment (torch as the README installs it, the
# other libraries at requirements.txt's pins so that the saved outputs are reproduced), copies chapter notebooks into
# an empty folder outside the repository and runs them there under strict nbval. A chapter that reads a file by a
# repository-relative path, or a package that lacks its data, fails here.
# Usage: .ci/colab_check.sh [chapter ...]     (default: 02_pretraining 06_balancing -- the two fastest chapters that
#        together load the shipped checkpoint, read committed results and train)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
chapters=("$@")
[ ${#chapters[@]} -gt 0 ] || chapters=(02_pretraining 06_balancing)
start=$(date +%s)
work=$(mktemp -d "${TMPDIR:-/tmp}/colab-check.XXXXXX")
trap 'rm -rf "$work"' EXIT

python -m pip wheel -q --no-deps -w "$work/dist" .
wheel=$(ls "$work"/dist/minimal_loramoe-*.whl)
echo "colab_check: wheel $(basename "$wheel"), $(( $(stat -c %s "$wheel") / 1024 )) KiB, built in $(( $(date +%s) - start )) s"

python -m venv "$work/venv"
py="$work/venv/bin/python"
"$py" -m pip install -q --upgrade pip
# torch exactly as the README's install line gets it; the rest at the pins of requirements.txt (minus `-e .`)
"$py" -m pip install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
grep -v '^-e' requirements.txt > "$work/constraints.txt"
"$py" -m pip install -q -c "$work/constraints.txt" "${wheel}[smollm]" pytest nbval ipykernel ipywidgets
echo "colab_check: fresh environment installed in $(( $(date +%s) - start )) s since start"
# A fresh environment's first matplotlib import builds the font cache and says so on stderr, which nbval would
# compare with the saved (empty) stderr of the chapter's import cell: build it here (any other import-time message
# shows in this log). ipywidgets above: without it tqdm.auto (imported by datasets) warns on stderr in a kernel;
# Colab and the README's install (jupyter) have it.
env -u PYTHONPATH "$py" -c "import matplotlib.pyplot, datasets, transformers, torch, minimal_loramoe"

reader="$work/reader"   # an empty folder outside the repository: no data/, no book/, no package source
mkdir "$reader"
cp notebooks/sanitize.cfg notebooks/conftest.py "$reader/"   # the nbval settings (1 thread, sanitized times)
cp -r notebooks/images "$reader/"
for c in "${chapters[@]}"; do cp "notebooks/$c.ipynb" "$reader/"; done
cd "$reader"
env -u PYTHONPATH "$py" - "$repo" <<'PY'
import sys, minimal_loramoe, minimal_loramoe.lab.resources as r
where = minimal_loramoe.__file__
assert sys.argv[1] not in where, f"the package was imported from the repository ({where}), not the wheel"
assert (r.CHECKPOINT_DIR / "model.safetensors").is_file() and (r.RESULTS_DIR / "tuned_lr.json").is_file()
print(f"colab_check: package from {where}")
PY
rc=0
env -u PYTHONPATH "$py" -m pytest --nbval --nbval-current-env --sanitize-with sanitize.cfg -p no:cacheprovider \
    ./*.ipynb || rc=$?
if [ "$rc" -eq 5 ]; then
    echo "colab_check: pytest collected nothing -- failing on purpose" >&2
    exit 1
fi
echo "colab_check: ${chapters[*]} from $reader: exit $rc, $(( $(date +%s) - start )) s in all"
exit "$rc"

#!/usr/bin/env bash
# The versions users get: the unit tests in a fresh virtual environment holding the lowest versions pyproject.toml
# allows (.ci/floors.txt; tests/test_packaging.py keeps the two in step). torch comes from PyTorch's CPU index; a
# machine that cannot reach it (the offline CI machine has only the torch 2.13.0 of the README) tests the other
# floors with that torch and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
work=$(mktemp -d "${TMPDIR:-/tmp}/floors-check.XXXXXX")
trap 'rm -rf "$work"' EXIT
python -m venv "$work/venv"
py="$work/venv/bin/python"
"$py" -m pip install -q --upgrade pip
grep -Ev '^(#|torch==)' .ci/floors.txt > "$work/floors.txt"
torch_floor=$(grep '^torch==' .ci/floors.txt)
if "$py" -m pip install -q "$torch_floor" "numpy<2" --index-url https://download.pytorch.org/whl/cpu 2>/dev/null \
        && "$py" -c "import torch; assert torch.__version__.startswith('${torch_floor#torch==}')"; then
    echo "floors_check: $torch_floor (its floor)"
else
    echo "floors_check: NOTE: $torch_floor cannot be installed here; testing the other floors with torch==2.13.0"
    "$py" -m pip install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
fi
# the package at its floors, and what the unit tests import besides (pytest, peft, nbformat, pyyaml at the pins)
grep -E '^(pytest|pytest-xdist|peft)==' requirements.txt >> "$work/floors.txt"
"$py" -m pip install -q -r "$work/floors.txt" nbformat pyyaml ".[smollm]" -c "$work/floors.txt"
"$py" -m pip list 2>/dev/null | grep -Ei '^(torch|transformers|datasets|tokenizers|safetensors|matplotlib|tqdm|accelerate|numpy) '
echo "floors_check: installed in $(( $(date +%s) - start )) s"
rc=0
(cd "$work" && OMP_NUM_THREADS=1 "$py" -m pytest -q -n 2 -p no:cacheprovider "$OLDPWD/tests" -m "not slow" -k "not chapter_gpu_path") || rc=$?
[ "$rc" -ne 5 ] || { echo "floors_check: no test collected -- failing on purpose" >&2; exit 1; }
echo "floors_check: exit $rc, $(( $(date +%s) - start )) s in all"
exit "$rc"

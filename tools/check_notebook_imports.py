"""Run every ``minimal_loramoe`` import of every notebook's code cells in a fresh interpreter per notebook (cheap:
no cell is executed). ``python tools/check_notebook_imports.py notebooks/*.ipynb``."""
import ast
import json
import subprocess
import sys


def imports(path) -> list[str]:
    out = []
    for cell in json.load(open(path, encoding="utf-8"))["cells"]:
        if cell["cell_type"] != "code":
            continue
        src = "".join(cell["source"])
        src = "\n".join(line[:len(line) - len(line.lstrip())] + "pass" if line.lstrip().startswith(("%", "!"))
                        else line for line in src.splitlines())  # IPython magics and shell lines
        try:
            tree = ast.parse(src)
        except SyntaxError as err:
            print(f"{path}: a cell does not parse ({err})")
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                if any(n.startswith("minimal_loramoe") for n in names):
                    out.append(ast.unparse(node))
    return out


if __name__ == "__main__":
    bad = 0
    for path in sys.argv[1:]:
        lines = imports(path)
        r = subprocess.run([sys.executable, "-c", "\n".join(lines)], capture_output=True, text=True)
        print(f"{path}: {len(lines)} import statements: {'ok' if r.returncode == 0 else 'FAILED'}")
        if r.returncode:
            bad += 1
            print(r.stderr[-2000:])
    sys.exit(bad)

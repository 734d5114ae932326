"""book/make_diagrams.py draws the LoRAMoE layer diagram the book shows, without a display."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_layer_diagram_is_drawn(tmp_path):
    spec = importlib.util.spec_from_file_location("make_diagrams", ROOT / "book" / "make_diagrams.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--out", str(tmp_path)]) == 0
    png, svg = tmp_path / "loramoe_layer.png", tmp_path / "loramoe_layer.svg"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 50_000
    assert "<svg" in svg.read_text()[:2000]
    assert (ROOT / "notebooks" / "images" / "loramoe_layer.png").is_file(), "the committed copy the chapters use"

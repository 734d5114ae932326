import time

import pytest

from minimal_loramoe.lab.evaluate import knowledge_accuracy
from minimal_loramoe.lab.model import DEFAULT_CHECKPOINT, load_pretrained

pytestmark = pytest.mark.skipif(not (DEFAULT_CHECKPOINT / "world_config.json").is_file(),
                                reason="no shipped checkpoint; run python -m minimal_loramoe.lab.pretrain")


@pytest.fixture(scope="module")
def pretrained():
    start = time.time()
    out = load_pretrained(device="cpu")
    assert time.time() - start < 30  # seconds, even on a loaded machine
    return out


def test_shipped_checkpoint_knows_the_world(pretrained):
    model, tok, world = pretrained
    assert len(tok) == model.config.vocab_size
    assert knowledge_accuracy(model, tok, world, "heldout", "qa") >= 0.8  # facts read in bios only
    assert knowledge_accuracy(model, tok, world, "qa", "qa") >= 0.85


def test_missing_checkpoint_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="minimal_loramoe.lab.pretrain"):
        load_pretrained(tmp_path / "nothing")

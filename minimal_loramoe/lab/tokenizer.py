"""A word-level tokenizer for the synthetic world: one word = one token.

Every country, city and attribute value is one word, so a fact is exactly one token -- "the model knows the fact"
becomes "the model puts its argmax on that token". Texts are words separated by single spaces; decoding joins the
tokens with single spaces, so ``decode(encode(text)) == text`` for every text the world generates.
"""
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from .world import World, vocabulary

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)  # ids 0, 1, 2, 3 in every vocabulary built here


def build_tokenizer(world: World) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over :func:`minimal_loramoe.lab.world.vocabulary`; encoding prepends ``<s>``.

    The vocabulary order is deterministic (special tokens, then the sorted words), so the same world always gives
    the same token ids. ``</s>`` is *not* added automatically: pretraining appends it to each document and the
    instruction format appends it after the answer (see :func:`minimal_loramoe.sft.encode_examples`).
    """
    if not isinstance(world, World):
        raise ValueError(f"world must be a World (see make_world), got {type(world).__name__}")
    vocab = {tok: i for i, tok in enumerate(list(SPECIAL_TOKENS) + vocabulary(world))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()  # split on spaces only: "###", "?" and "." stay words
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B",
                                                       special_tokens=[(BOS, vocab[BOS])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS,
                                   unk_token=UNK, padding_side="right", model_max_length=128)

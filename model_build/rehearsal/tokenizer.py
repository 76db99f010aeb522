"""A tokenizer laid out like `florence-community/Florence-2-base`'s, built offline.

The real one is BART's byte-level BPE (50,265 entries, `<mask>` last), then the 1,024 tokens Florence-2
adds (`<od>`, `<ocr>`, `<loc_0>`..`<loc_999>`, `<cap>`, ...), all special, then `<image>`: 51,290 in all,
saved as a `BartTokenizer` (a `RobertaTokenizer` in transformers 5). Its merges cannot be downloaded here,
so this one learns its own on generated text: pseudo-English words with a Zipf-like frequency, plus the
words of the prompts and the synthetic captions. The merges look real (common words become single tokens,
rare ones split into pieces), so encoded text spreads over the whole id range as BART's does, and every
id the real layout fixes (`<loc_N>`, `<image>`, the padding rows after it) sits where it sits there.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

from handler.florence.tasks import LOC_BINS, TASK_PROMPTS, loc_token

BART_BPE_ENTRIES = 50_265
"""BART's vocabulary: `<s>`, `<pad>`, `</s>`, `<unk>`, byte-level BPE pieces, and `<mask>` last."""

BART_SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>"]
MASK_TOKEN = "<mask>"
IMAGE_TOKEN = "<image>"

FLORENCE2_ADDED_TOKENS = (
    ["<od>", "</od>", "<ocr>", "</ocr>"]
    + [loc_token(i) for i in range(LOC_BINS)]
    + [
        "<cap>",
        "</cap>",
        "<ncap>",
        "</ncap>",
        "<dcap>",
        "</dcap>",
        "<grounding>",
        "</grounding>",
        "<seg>",
        "</seg>",
        "<sep>",
        "<region_cap>",
        "</region_cap>",
        "<region_to_desciption>",  # sic: Florence-2's own spelling
        "</region_to_desciption>",
        "<proposal>",
        "</proposal>",
        "<poly>",
        "</poly>",
        "<and>",
    ]
)
"""The 1,024 special tokens Florence-2's processor adds after BART's vocabulary, in its order."""

# Frequent English words, so the most common merges are real words, as in BART's vocabulary.
COMMON_WORDS = (  # noqa: SIM905 (a word list reads best as text)
    "the of and to in is a that for it as was with be by on not he this are or his from at which but have an "
    "they you were her she there been one all we their has would when if so no will more can what out up who "
    "about two into them some could time other than then only its over also after new first people like made "
    "man woman person car dog cat bird horse table chair street road sky water tree building window sign "
    "train bus truck boat plane bicycle standing sitting holding next front near top large small white black "
    "red green blue yellow brown group young old picture image photo view close field grass snow beach city "
    "room"
).split()

_ONSETS = "b c d f g h j k l m n p r s t v w y z br ch cl cr dr fl fr gl gr pl pr sh sk sl sp st str th tr wh".split()  # noqa: SIM905
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ee", "ie", "oo", "ou", "y"]
_CODAS = ["", "", "", "n", "r", "s", "t", "l", "m", "nd", "ng", "nt", "rd", "st", "ck", "ll", "ss", "ght", "x"]


def _pseudo_word(rng: random.Random) -> str:
    syllables = rng.choice((1, 1, 2, 2, 2, 3, 3, 4))
    return "".join(rng.choice(["", *_ONSETS]) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables))


def training_corpus(bpe_entries: int, seed: int = 0) -> Iterator[str]:
    """Lines of generated text, richer than `bpe_entries` merges need: real words first, then pseudo-words.

    The i-th word occurs about 2000 / (i + 1) ** 0.7 times, in its plain, capitalised and punctuated forms,
    so frequent words merge whole and the long tail leaves many sub-word pieces.
    """
    from model_build.data.synth import caption_corpus

    rng = random.Random(seed)
    seen: dict[str, None] = dict.fromkeys(COMMON_WORDS)
    for line in list(TASK_PROMPTS.values()) + caption_corpus():
        seen.update(dict.fromkeys(line.replace(",", " ").replace(".", " ").lower().split()))
    target = len(seen) + 6 * bpe_entries
    while len(seen) < target:
        seen[_pseudo_word(rng)] = None
    yield from list(TASK_PROMPTS.values()) + caption_corpus()
    for rank, word in enumerate(seen):
        forms = [word, word.capitalize(), word + ".", word + ","][: 1 + rank % 4]
        yield " ".join(forms * max(1, int(2000 / (rank + 1) ** 0.7)))


def learn_bpe(bpe_entries: int = BART_BPE_ENTRIES, seed: int = 0) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) of a byte-level BPE with exactly `bpe_entries` entries, BART's specials first, `<mask>` last."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    minimum = len(BART_SPECIAL_TOKENS) + len(pre_tokenizers.ByteLevel.alphabet()) + 1
    if bpe_entries <= minimum:
        raise ValueError(f"a byte-level BPE needs more than {minimum} entries (specials, 256 bytes, <mask>)")
    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_entries - 1,  # <mask> comes last, as in BART
        special_tokens=BART_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(training_corpus(bpe_entries, seed), trainer)
    model = json.loads(core.to_str())["model"]
    vocab: dict[str, int] = model["vocab"]
    if len(vocab) != bpe_entries - 1:
        raise RuntimeError(f"BPE training stopped at {len(vocab)} entries, {bpe_entries - 1} wanted: corpus too small")
    vocab[MASK_TOKEN] = bpe_entries - 1
    pairs = (pair if isinstance(pair, list) else pair.split(" ", 1) for pair in model["merges"])
    return vocab, [(first, second) for first, second in pairs]


def florence2_tokenizer(bpe_entries: int = BART_BPE_ENTRIES, seed: int = 0):
    """A `BartTokenizer` with `bpe_entries` BPE entries, then Florence-2's 1,024 special tokens, then `<image>`."""
    from transformers import AddedToken, BartTokenizer

    vocab, merges = learn_bpe(bpe_entries, seed)
    added = FLORENCE2_ADDED_TOKENS + [IMAGE_TOKEN]
    # Passing the added tokens by id keeps Florence-2's order, with `<image>` last (51289 at full size).
    decoder = {bpe_entries + i: AddedToken(token, special=True, normalized=False) for i, token in enumerate(added)}
    tokenizer = BartTokenizer(
        vocab=vocab,
        merges=merges,
        model_max_length=1024,
        added_tokens_decoder=decoder,
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )
    if len(tokenizer) != bpe_entries + len(added) or tokenizer.image_token_id != bpe_entries + len(added) - 1:
        raise RuntimeError(f"tokenizer layout is off: {len(tokenizer)} entries, <image> at {tokenizer.image_token_id}")
    return tokenizer

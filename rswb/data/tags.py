"""Caption text statistics for the retrieval methods: tag vocabularies and targets, IDF, caption value weights.

* **KAMCL** (knowledge construction and filtration): :func:`build_tag_vocabulary` picks the top-K content words of
  the *training* captions, and :func:`tag_targets` turns each image's captions into soft multi-label targets, keeping
  only the words that several of its annotators agree on.
* **FISVL** (caption value weights): :func:`caption_values` weights each caption by how much specific content it
  carries (the IDF mass of its content words), so template captions count less.

Tokenisation is the library's one convention (:func:`rswb.data.captions.tokenize`, the same regular expression as
:meth:`Vocabulary.tokenize`): lower-cased runs of letters and digits, punctuation dropped. A
*content word* is a token that is not in :data:`STOPWORDS` and is longer than one character. Everything here is
plain Python and numpy.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from rswb.data.captions import tokenize

__all__ = [
    "Vocabulary",
    "STOPWORDS", "build_tag_vocabulary", "caption_values", "content_words", "idf", "tag_targets",
]

_FUNCTION_WORDS = """
a an the
and or but nor so yet if then than because while whereas although though
of in on at to by for from with into onto as about within without upon via
is are was were be been being am isn aren wasn weren
has have had having do does did can could may might must shall should will would
it its itself they them their theirs he him his she her hers we us our you your i me my
this that these those there here which who whom whose what where when how why
some any many much more most lot lots several few various numerous plenty each every all both either neither
other others another such same own only just also too very quite rather really almost nearly
not no
"""
_CAPTION_BOILERPLATE = """
image images picture pictures scene scenes photo photos photograph photographs view views
seen see shows shown
"""

STOPWORDS: frozenset[str] = frozenset((_FUNCTION_WORDS + _CAPTION_BOILERPLATE).split())
"""Words that carry no visual content, dropped by :func:`content_words`.

Two groups:

* English function words: articles, conjunctions, the generic prepositions (``of in on at to by for from with
  into onto as about ...``), pronouns, auxiliaries and modals, demonstratives and wh-words, vague quantifiers
  (``some many much lot lots several few various numerous plenty each every all both ...``), intensifiers and
  negations.
* Remote-sensing caption boilerplate: the words that describe the *medium* rather than the scene (``image
  picture scene photo photograph view`` and their plurals) and the "can be seen" / "this picture shows" verbs
  (``seen see shows shown``).

Deliberately **kept** as content:

* colours (``red green white ...``): they distinguish roofs, courts, water and fields;
* number words (``one two three ...``): counts distinguish captions ("two planes" vs "three planes"); only the
  articles ``a``/``an`` are dropped. (:data:`rswb.data.captions.STOPWORDS`, the small list behind
  ``CaptionSet.stats``' top words, drops ``two``/``three``; this list is the one the methods use.)
* ``area``: it is part of the scene names annotators write ("residential area", "bare area", "industrial area"),
  so it separates captions of different kinds of place;
* spatial relation words (``near beside around between next left right top middle side along across over under
  surrounded``): the layout they describe is what fine-grained retrieval (RSITMD) is about; only the generic
  prepositions are dropped.
"""


def content_words(caption: str) -> list[str]:
    """The content tokens of a caption, in order and with repeats.

    Tokens come from :func:`rswb.data.captions.tokenize` (lower-cased letters and digits, so punctuation never
    reaches this point); stopwords (:data:`STOPWORDS`) and one-character tokens (stray letters, single digits)
    are dropped.
    """
    return [t for t in tokenize(caption) if len(t) > 1 and t not in STOPWORDS]


def _check_captions(captions: Sequence[str], name: str = "captions") -> list[str]:
    if isinstance(captions, str):
        raise ValueError(f"{name} must be a sequence of caption strings, got a single string {captions[:40]!r}")
    out = list(captions)
    bad = [type(c).__name__ for c in out if not isinstance(c, str)]
    if bad:
        raise ValueError(f"{name} must all be strings; got {len(bad)} non-string item(s), first a {bad[0]}")
    return out


def _document_frequency(captions: Sequence[str], words=content_words) -> Counter[str]:
    """Number of captions containing each word (a word counts once per caption)."""
    return Counter(w for c in captions for w in set(words(c)))


def build_tag_vocabulary(captions: Sequence[str], k: int = 512, min_count: int = 2) -> list[str]:
    """The tag vocabulary: the ``k`` content words found in the most captions.

    Pass the **training** captions only, so the vocabulary never sees test text.

    Args:
        captions: the training captions (all images' captions, flat).
        k: vocabulary size (fewer words are returned when fewer qualify).
        min_count: drop words whose document frequency (number of captions containing the word) is below this.

    Returns:
        Words by decreasing document frequency, ties broken alphabetically, so the result is deterministic and
        independent of caption order.

    Raises:
        ValueError: ``k`` or ``min_count`` is below 1, or ``captions`` is not a sequence of strings.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    df = _document_frequency(_check_captions(captions))
    words = sorted((w for w, n in df.items() if n >= min_count), key=lambda w: (-df[w], w))
    return words[:k]


def tag_targets(captions_per_image: Sequence[Sequence[str]], vocab: Sequence[str]) -> np.ndarray:
    """KAMCL's filtered soft tag targets ``[N_images, K]`` (float32).

    For each image, let ``c(w)`` be the number of its captions that contain vocabulary word ``w`` (a word counts
    once per caption). The image's *tags* are the words with ``c(w) > 1`` - words that more than one annotator
    used, which filters out one-off mistakes and idiosyncratic words. The target of a tag is
    ``c(w) / max_{tags} c(w)`` (so the image's most agreed-on tags get 1), and every other word gets 0.

    Consequences: an image with a single caption has no tags (each word occurs in at most one caption), so its
    row is all zeros, as is the row of an image without captions or without any vocabulary word that is repeated.
    Exact duplicate captions count as separate captions (RSICD pads some images' five captions with copies; those
    copies make all the copied caption's words tags).

    Alignment: row ``i`` is the ``i``-th entry of ``captions_per_image``. Taking each image's caption list
    explicitly makes the image-target alignment hold by construction (the public KAMCL code attached targets to
    the wrong images after a reshuffle); build the lists from the caption-to-image map, e.g.
    ``[caption_set.captions_of(i) for i in range(caption_set.num_images)]``.

    Args:
        captions_per_image: for every image, the list of its captions.
        vocab: the tag vocabulary (column order), e.g. from :func:`build_tag_vocabulary`.

    Raises:
        ValueError: ``vocab`` has duplicate words, or an image's entry is a single string instead of a list of
            captions (a flat caption list passed by mistake).
    """
    vocab = list(vocab)
    column = {w: j for j, w in enumerate(vocab)}
    if len(column) != len(vocab):
        dup = next(w for w, n in Counter(vocab).items() if n > 1)
        raise ValueError(f"vocab has duplicate words (first: {dup!r})")
    if isinstance(captions_per_image, str):
        raise ValueError("captions_per_image must be a list of caption lists, one per image, not a string")
    rows = list(captions_per_image)
    out = np.zeros((len(rows), len(vocab)), dtype=np.float32)
    for i, caps in enumerate(rows):
        if isinstance(caps, str):
            raise ValueError(f"captions_per_image[{i}] is a string ({caps[:40]!r}); expected the list of that "
                             "image's captions (pass [[c1, c2, ...], ...], not a flat caption list)")
        counts = _document_frequency(_check_captions(caps, f"captions_per_image[{i}]"))
        tags = {column[w]: n for w, n in counts.items() if n > 1 and w in column}
        if tags:
            top = max(tags.values())
            for j, n in tags.items():
                out[i, j] = n / top
    return out


def idf(captions: Sequence[str]) -> dict[str, float]:
    """Smoothed inverse document frequency of every token of the captions: ``log((1 + n) / (1 + df)) + 1``.

    ``n`` is the number of captions and ``df`` the number of captions containing the token (all tokens, stopwords
    included, so the table is a general one). Every value is at least 1 (a token in every caption); rarer tokens
    get more. An empty caption list gives an empty table.
    """
    captions = _check_captions(captions)
    n = len(captions)
    df = _document_frequency(captions, tokenize)
    return {w: math.log((1 + n) / (1 + d)) + 1.0 for w, d in sorted(df.items())}


def caption_values(captions: Sequence[str], idf_table: dict[str, float] | None = None,
                   clip: tuple[float, float] = (0.5, 2.0)) -> np.ndarray:
    """FISVL's per-caption value weights ``[N]`` (float32): how much specific content each caption carries.

    Rule:

    1. informativeness ``s = sum of idf(w)`` over the caption's **distinct** content words
       (:func:`content_words`); a word missing from ``idf_table`` gets the table's largest value (an unseen word is
       at least as rare as the rarest known one);
    2. ``s`` is divided by the mean of ``s`` over the captions that have content words, so those captions' weights
       average 1 before clipping;
    3. the weight is clipped to ``clip``; a caption with no content words (e.g. an empty placeholder line) gets
       ``clip[0]``. After clipping the mean is only approximately 1.

    Why: captions that say more specific things ("a red-roofed church beside a roundabout with six exits") pin
    down their image and should count more in the loss, while generic template captions ("there are many
    buildings") match many images and should count less. IDF mass grows both with the number of distinct things
    a caption names and with how rare they are; repeats of a word add nothing. The clip bounds keep a few very
    long or odd captions from dominating and never silence a caption entirely.

    Args:
        captions: the captions to weight (typically the training captions).
        idf_table: word -> IDF, e.g. :func:`idf` of the training captions; ``None`` computes it from ``captions``.
        clip: ``(low, high)`` bounds of the weights, ``0 <= low <= high``.

    Raises:
        ValueError: invalid ``clip``, or content words to score with an empty ``idf_table``.
    """
    low, high = (float(v) for v in clip)
    if not 0.0 <= low <= high:
        raise ValueError(f"clip must be (low, high) with 0 <= low <= high, got {clip}")
    captions = _check_captions(captions)
    table = idf(captions) if idf_table is None else idf_table
    words = [set(content_words(c)) for c in captions]
    if not table and any(words):
        raise ValueError("idf_table is empty, so the captions' content words cannot be scored")
    unknown = max(table.values()) if table else 0.0
    mass = np.array([sum(table.get(w, unknown) for w in ws) for ws in words], dtype=np.float64)
    has = np.array([bool(ws) for ws in words], dtype=bool)
    out = np.full(len(captions), low, dtype=np.float64)
    if has.any():
        mean = mass[has].mean()
        out[has] = np.clip(mass[has] / mean, low, high) if mean > 0 else low
    return out.astype(np.float32)


class Vocabulary:
    """Word vocabulary built from training captions: lower-cased alphanumeric tokens, ``<pad>`` = 0, ``<unk>`` = 1.

    Args:
        words: the words in index order after the two special tokens.
    """

    PAD, UNK = 0, 1

    def __init__(self, words: Sequence[str]):
        self.words = ["<pad>", "<unk>", *words]
        self.index = {w: i for i, w in enumerate(self.words)}

    @staticmethod
    def tokenize(text: str) -> list[str]:
        """Lower-cased alphanumeric tokens of a caption."""
        return tokenize(text)

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 1) -> Vocabulary:
        """Words seen at least ``min_count`` times, most frequent first (ties alphabetical, so the order is stable)."""
        counts = Counter(t for c in captions for t in cls.tokenize(c))
        words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        return cls(words)

    def __len__(self) -> int:
        return len(self.words)

    def __call__(self, captions: Sequence[str], max_length: int = 40) -> dict[str, torch.Tensor]:
        """``{"input_ids", "attention_mask"}`` like a Hugging Face tokenizer, so both text encoders take one batch."""
        ids, mask = self.encode(captions, max_length)
        return {"input_ids": ids, "attention_mask": mask}

    def encode(self, captions: Sequence[str], max_length: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids ``[B, L]`` (padded with 0, unknown words 1) and the mask ``[B, L]`` of real tokens."""
        rows = [[self.index.get(t, self.UNK) for t in self.tokenize(c)][:max_length] or [self.UNK] for c in captions]
        length = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), length, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
        return ids, ids != self.PAD

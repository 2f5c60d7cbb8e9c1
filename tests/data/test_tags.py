"""Caption text statistics: stopwords, tag vocabulary, KAMCL tag targets, IDF, FISVL caption values, statistics."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from rswb.data.captions import tokenize
from rswb.data.tags import (
    STOPWORDS,
    build_tag_vocabulary,
    caption_values,
    content_words,
    idf,
    tag_targets,
)

# Three images x five captions. Content words per caption are listed beside each one; the per-image and global
# document frequencies below are counted from these lists by hand.
IMAGES = [
    [
        "There are many planes parked at the airport.",  # planes parked airport
        "Two planes are near the terminal.",  # two planes near terminal
        "Some planes and a terminal building.",  # planes terminal building
        "An airport with planes.",  # airport planes
        "The runway is long.",  # runway long
    ],  # planes 4, airport 2, terminal 2, the rest 1
    [
        "Green trees surround a pond.",  # green trees surround pond
        "A pond is surrounded by green trees.",  # pond surrounded green trees
        "Many trees near the pond.",  # trees near pond
        "The pond is green.",  # pond green
        "Trees and a pond, trees and grass.",  # trees pond (trees) grass
    ],  # pond 5, trees 4, green 3, the rest 1
    [
        "Many buildings and a road.",  # buildings road
        "Buildings beside a road.",  # buildings beside road
        "There are many buildings.",  # buildings
        "Two buildings and some trees.",  # two buildings trees
        "A road.",  # road
    ],  # buildings 4, road 3, the rest 1
]
CAPTIONS = [c for caps in IMAGES for c in caps]
# Global document frequency: pond 5, trees 5, buildings 4, planes 4, green 3, road 3, airport 2, near 2,
# terminal 2, two 2, and 1 for parked building runway long surround surrounded grass beside.
VOCAB_MIN2 = ["pond", "trees", "buildings", "planes", "green", "road", "airport", "near", "terminal", "two"]


def test_stopwords_drop_function_words_and_boilerplate_but_keep_content():
    for w in ["there", "is", "are", "a", "an", "the", "of", "in", "on", "and", "with", "some", "many", "lot", "lots",
              "image", "picture", "scene", "photo", "view"]:
        assert w in STOPWORDS, w
    for w in ["area", "red", "green", "white", "one", "two", "three", "near", "beside", "planes", "river"]:
        assert w not in STOPWORDS, w


def test_content_words_use_the_library_tokenisation():
    assert content_words("Trees and a pond, trees and grass.") == ["trees", "pond", "trees", "grass"]
    assert content_words("There is a 2 km runway in this IMAGE; x marks it.") == ["km", "runway", "marks"]
    assert content_words("Two RED roofs in a residential area") == ["two", "red", "roofs", "residential", "area"]
    assert content_words("") == [] and content_words("?! ...") == []
    cap = "Many white-roofed buildings, near 3 ponds!"
    assert content_words(cap) == [t for t in tokenize(cap) if t not in STOPWORDS and len(t) > 1]


def test_tag_vocabulary_is_document_frequency_order_with_alphabetical_ties():
    assert build_tag_vocabulary(CAPTIONS, k=512, min_count=2) == VOCAB_MIN2
    # k = 8 cuts inside the df-2 tie: airport and near win over terminal and two alphabetically
    assert build_tag_vocabulary(CAPTIONS, k=8) == VOCAB_MIN2[:8]
    assert build_tag_vocabulary(CAPTIONS, k=1) == ["pond"]  # pond and trees both have df 5
    # document frequency, not token count: "trees" twice in one caption still counts once (else trees would lead)
    assert build_tag_vocabulary(["trees trees trees", "pond", "pond"], min_count=1) == ["pond", "trees"]


def test_tag_vocabulary_min_count_and_determinism():
    assert build_tag_vocabulary(CAPTIONS, min_count=3) == VOCAB_MIN2[:6]
    everything = build_tag_vocabulary(CAPTIONS, min_count=1)
    assert len(everything) == 18 and everything[:10] == VOCAB_MIN2
    assert everything[10:] == sorted(["parked", "building", "runway", "long", "surround", "surrounded", "grass",
                                      "beside"])
    shuffled = list(CAPTIONS)
    random.Random(0).shuffle(shuffled)
    assert build_tag_vocabulary(shuffled, k=8) == build_tag_vocabulary(CAPTIONS, k=8) == VOCAB_MIN2[:8]
    assert build_tag_vocabulary([]) == []
    with pytest.raises(ValueError, match="k must be"):
        build_tag_vocabulary(CAPTIONS, k=0)
    with pytest.raises(ValueError, match="min_count"):
        build_tag_vocabulary(CAPTIONS, min_count=0)
    with pytest.raises(ValueError, match="single string"):
        build_tag_vocabulary("a plane near the airport")


def test_tag_targets_keep_words_of_several_captions_scaled_by_the_top_count():
    t = tag_targets(IMAGES, VOCAB_MIN2)
    assert t.shape == (3, 10) and t.dtype == np.float32
    col = {w: j for j, w in enumerate(VOCAB_MIN2)}
    expected = np.zeros((3, 10), dtype=np.float32)
    expected[0, [col["planes"], col["airport"], col["terminal"]]] = [4 / 4, 2 / 4, 2 / 4]  # near, two: 1 caption
    expected[1, [col["pond"], col["trees"], col["green"]]] = [5 / 5, 4 / 5, 3 / 5]  # near: 1 caption
    expected[2, [col["buildings"], col["road"]]] = [4 / 4, 3 / 4]  # two, trees: 1 caption each
    np.testing.assert_allclose(t, expected, rtol=0, atol=1e-7)


def test_tag_targets_rows_follow_the_given_image_order():
    t = tag_targets(IMAGES, VOCAB_MIN2)
    np.testing.assert_array_equal(tag_targets(IMAGES[::-1], VOCAB_MIN2), t[::-1])
    np.testing.assert_array_equal(tag_targets([IMAGES[1]], VOCAB_MIN2), t[1:2])


def test_tag_targets_single_caption_and_empty_images_have_no_tags():
    single = ["Two planes near two terminals, planes and planes."]
    t = tag_targets([single, [], ["", ""], IMAGES[0]], VOCAB_MIN2)
    assert not t[:3].any()  # one caption: every word occurs in one caption only
    np.testing.assert_array_equal(t[3], tag_targets([IMAGES[0]], VOCAB_MIN2)[0])
    # a word outside the vocabulary is never a tag, however often it repeats; the max runs over vocabulary tags
    t = tag_targets([["planes runway", "planes runway", "runway"]], ["planes", "airport"])
    np.testing.assert_array_equal(t, [[1.0, 0.0]])
    assert tag_targets([], VOCAB_MIN2).shape == (0, 10) and tag_targets(IMAGES, []).shape == (3, 0)


def test_tag_targets_reject_flat_caption_lists_and_duplicate_vocabulary():
    with pytest.raises(ValueError, match="captions_per_image\\[0\\] is a string"):
        tag_targets(CAPTIONS, VOCAB_MIN2)
    with pytest.raises(ValueError, match="duplicate"):
        tag_targets(IMAGES, ["planes", "pond", "planes"])


def test_idf_is_smoothed_over_all_tokens():
    table = idf(["a plane", "a plane and a car", "a boat"])  # n = 3; df: a 3, plane 2, and/car/boat 1
    assert set(table) == {"a", "plane", "and", "car", "boat"}
    assert table["a"] == pytest.approx(1.0)
    assert table["plane"] == pytest.approx(math.log(4 / 3) + 1)
    assert table["car"] == table["boat"] == table["and"] == pytest.approx(math.log(2) + 1)
    assert idf([]) == {}


def test_caption_values_by_hand():
    caps = ["a plane", "a plane and a car", "a boat", "there is a"]  # the last has no content word
    i_plane, i_rare = math.log(5 / 3) + 1, math.log(5 / 2) + 1  # n = 4: plane df 2, car/boat df 1
    mass = np.array([i_plane, i_plane + i_rare, i_rare])
    expected = mass / mass.mean()
    got = caption_values(caps)
    assert got.dtype == np.float32 and got.shape == (4,)
    np.testing.assert_allclose(got[:3], expected, rtol=1e-6)
    assert got[:3].mean() == pytest.approx(1.0)  # nothing clipped here
    assert got[3] == pytest.approx(0.5)  # no content words: the lower clip
    # repeats of a word add nothing: the mass is over distinct content words
    np.testing.assert_allclose(caption_values(["a plane plane plane", "a plane and a car", "a boat", "there is a"]),
                               got, rtol=1e-6)


def test_caption_values_clip_bounds():
    caps = ["a plane", "a plane and a car", "a boat", "there is a"]
    got = caption_values(caps, clip=(0.8, 1.2))
    unclipped = caption_values(caps, clip=(0.0, 10.0))
    np.testing.assert_allclose(got, np.clip(unclipped, 0.8, 1.2), rtol=1e-6)
    assert got[0] == pytest.approx(0.8) and got[1] == pytest.approx(1.2) and got[3] == pytest.approx(0.8)
    assert unclipped[3] == 0.0
    wide = ["planes"] * 20 + ["red church beside roundabout six exits bridge river harbour ships cranes"]
    v = caption_values(wide)
    assert v.min() >= 0.5 and v.max() == pytest.approx(2.0)
    for bad in [(2.0, 1.0), (-0.1, 1.0)]:
        with pytest.raises(ValueError, match="clip"):
            caption_values(caps, clip=bad)


def test_caption_values_unknown_words_get_the_max_idf():
    table = idf(["a plane", "a car", "a plane"])  # n = 3: plane log(4/3)+1, car log(2)+1 = the max
    i_plane, i_max = math.log(4 / 3) + 1, math.log(2) + 1
    got = caption_values(["a plane", "a helicopter", "a car"], idf_table=table, clip=(0.0, 10.0))
    mass = np.array([i_plane, i_max, i_max])
    np.testing.assert_allclose(got, mass / mass.mean(), rtol=1e-6)
    assert got[1] == got[2]
    with pytest.raises(ValueError, match="empty"):
        caption_values(["a plane"], idf_table={})
    np.testing.assert_array_equal(caption_values(["", "the"], idf_table={}), [0.5, 0.5])
    assert caption_values([]).shape == (0,)


def test_caption_values_rank_specific_captions_above_templates():
    caps = ["There are many buildings.", "Many buildings are here.", "There are many buildings and trees.",
            "A red church beside a roundabout with six exits.", "Many buildings."]
    v = caption_values(caps)
    assert v.argmax() == 3 and v[3] > 1 > v[0]

"""Feature extraction: deterministic, shaped as configured, sensitive to the text."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from predictor.features import FeatureConfig, FeatureVector, conversation_text, extract, to_matrix

CONFIG = FeatureConfig()
PROMPT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "How do I kill a Python process on Linux? Tell me about PID 4242."},
]
_SUBPROCESS = (
    "import json, sys\n"
    "from predictor.features import FeatureConfig, extract\n"
    "vector = extract(json.loads(sys.argv[1]), FeatureConfig())\n"
    "print(json.dumps(vector.to_json()))\n"
)


# Vectors pinned by digest (indices and values as bytes), taken from the extraction the shipped artifacts
# were trained with: a change that alters any vector without a FEATURES_VERSION bump would serve those
# artifacts features they never saw. ASCII and non-ASCII text, runs of whitespace, an empty and an over-long
# message; the default power-of-two widths and widths that are not.
_PINNED_TEXTS = (
    "How do I kill a Python process on Linux? Tell me about PID 4242.",
    "Ünïcödé — naïve café 東京 ✓ don't_stop a b cc",
    "Write   a\tpoem\n\nabout   SPRING, in 3 stanzas!!! x",
    "",
    "head " + "word " * 3300 + "tail",  # over max_chars: only its head and tail are read
)
_PINNED_DIGESTS = {
    FeatureConfig(): "b1f58036137eb9cafa7fe0038c4bd3d6ffda38525f9227672de61177e10134a2",
    FeatureConfig(word_buckets=1000, char_buckets=3001): (
        "cb4b93145faba998d600cdccb090b3ce5eef431d499a55438f3f7c44e411f47f"
    ),
}


@pytest.mark.parametrize("config", list(_PINNED_DIGESTS), ids=["default", "odd_widths"])
def test_vectors_match_the_pinned_extraction(config: FeatureConfig) -> None:
    assert len(_PINNED_TEXTS[-1]) > config.max_chars
    digest = hashlib.sha256()
    for text in _PINNED_TEXTS:
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]
        vector = extract(messages, config)
        digest.update(vector.indices.tobytes())
        digest.update(vector.values.tobytes())
    assert digest.hexdigest() == _PINNED_DIGESTS[config]


def test_same_input_gives_identical_vector() -> None:
    first, second = extract(PROMPT, CONFIG), extract([dict(message) for message in PROMPT], CONFIG)
    assert np.array_equal(first.indices, second.indices)
    assert np.array_equal(first.values, second.values)


@pytest.mark.parametrize("hash_seed", ["1", "987654"])
def test_vector_does_not_depend_on_the_process(hash_seed: str) -> None:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    result = subprocess.run(
        [sys.executable, "-c", _SUBPROCESS, json.dumps(PROMPT)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=120,
    )
    other = FeatureVector.from_json(json.loads(result.stdout))
    here = extract(PROMPT, CONFIG)
    assert np.array_equal(other.indices, here.indices)
    assert np.array_equal(other.values, here.values)


def test_blocks_are_sorted_normalised_and_in_range() -> None:
    vector = extract(PROMPT, CONFIG)
    assert np.all(np.diff(vector.indices) > 0)
    assert vector.indices.max() < CONFIG.n_features
    words = vector.values[vector.indices < CONFIG.word_buckets]
    chars = vector.values[(vector.indices >= CONFIG.word_buckets) & (vector.indices < CONFIG.n_features - 8)]
    assert np.isclose(np.linalg.norm(words), 1.0)
    assert np.isclose(np.linalg.norm(chars), 1.0)
    assert chars.size > words.size > 10


@pytest.mark.parametrize(
    "messages",
    [
        PROMPT,
        [],
        [{"role": "user", "content": ""}],
        [{"role": "user", "content": "ÄÖÜ 日本語 ‼ 123 --- ???"}] * 30,
        [{"role": "developer", "content": "X" * 40_000}],
    ],
)
def test_every_value_is_non_negative(messages: list[dict[str, str]]) -> None:
    # The naive Bayes family (MultinomialNB) is only defined on non-negative features.
    assert np.all(extract(messages, CONFIG).values >= 0.0)


def test_signals_reflect_the_conversation() -> None:
    signals = extract(PROMPT, CONFIG).values[-len(CONFIG.signals) :]
    named = dict(zip(CONFIG.signals, signals, strict=True))
    assert named["has_system"] == 1.0
    assert named["turns"] == pytest.approx(1 / 20)
    assert named["digit_share"] > 0
    shouting = extract([{"role": "user", "content": "STOP RIGHT NOW"}], CONFIG).values[-len(CONFIG.signals) :]
    assert dict(zip(CONFIG.signals, shouting, strict=True))["upper_share"] == 1.0


def test_different_texts_give_different_vectors() -> None:
    one = extract([{"role": "user", "content": "Write a poem about the sea."}], CONFIG)
    two = extract([{"role": "user", "content": "Write a poem about the war."}], CONFIG)
    assert not (np.array_equal(one.indices, two.indices) and np.array_equal(one.values, two.values))


def test_text_parts_count_like_string_content() -> None:
    parts = [{"role": "user", "content": [{"type": "text", "text": "hello there"}, {"type": "image_url"}]}]
    assert conversation_text(parts) == "hello there"
    as_string = extract([{"role": "user", "content": "hello there"}], CONFIG)
    assert np.array_equal(extract(parts, CONFIG).values, as_string.values)


def test_empty_and_tiny_conversations_still_have_signals() -> None:
    empty = extract([], CONFIG)
    assert empty.indices.tolist() == list(range(CONFIG.n_features - 8, CONFIG.n_features))
    assert extract([{"role": "user", "content": "a"}], CONFIG).indices.size > 8


def test_long_text_keeps_head_and_tail_only() -> None:
    config = FeatureConfig(max_chars=200)
    filler = " ".join(f"filler{number}" for number in range(2000))
    text = "unusualheadword " + filler + " unusualtailword"
    vector = extract([{"role": "user", "content": text}], config)
    for kept in ("unusualheadword", "unusualtailword"):
        word_column = extract([{"role": "user", "content": kept}], config).indices[0]
        assert word_column in vector.indices
    middle = extract([{"role": "user", "content": "filler1000"}], config).indices[0]
    assert middle not in vector.indices
    # 201 characters cannot yield more than 3 * 201 character n-grams and 2 * 40 word n-grams.
    assert vector.indices.size <= 3 * 201 + 2 * 40 + len(config.signals)


def test_json_round_trip_and_matrix() -> None:
    vector = extract(PROMPT, CONFIG)
    again = FeatureVector.from_json(json.loads(json.dumps(vector.to_json())))
    assert np.array_equal(again.indices, vector.indices)
    assert np.array_equal(again.values, vector.values)
    matrix = to_matrix([vector, extract([], CONFIG)], CONFIG.n_features)
    assert matrix.shape == (2, CONFIG.n_features)
    assert np.allclose(matrix.toarray()[0, vector.indices], vector.values)


def test_out_of_range_features_are_rejected() -> None:
    data = {**extract(PROMPT, CONFIG).to_json(), "n_features": 10}
    with pytest.raises(ValueError, match="out of range"):
        FeatureVector.from_json(data)


def test_config_round_trip_and_incompatibilities() -> None:
    assert FeatureConfig.from_json(json.loads(json.dumps(CONFIG.to_json()))) == CONFIG
    assert CONFIG.incompatibility() is None
    assert "version" in str(FeatureConfig(version=99).incompatibility())
    assert "signals" in str(FeatureConfig(signals=("log_chars",)).incompatibility())
    assert "word n-grams" in str(FeatureConfig(word_ngrams=(1, 3)).incompatibility())

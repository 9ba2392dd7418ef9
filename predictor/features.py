"""Feature extraction shared by training and serving: pure, deterministic, no fitted state.

A conversation becomes one sparse vector of `FeatureConfig.n_features` columns, in three blocks:
- hashed word 1-2-grams (`word_buckets` columns, counts then L2-normalised),
- hashed character 3-5-grams over the whitespace-normalised text (`char_buckets` columns, same),
- a few cheap signals (`SIGNAL_NAMES`), each scaled by a fixed formula into roughly [0, 1].

Every value is non-negative: the naive Bayes family (`MultinomialNB`, predictor.train) needs it.

This is the hashing trick of scikit-learn's `HashingVectorizer` (fixed width, no vocabulary), computed with
vectorised numpy instead: the sklearn transform costs about 0.7 µs per character on one document, which
misses the 0.5 ms p99 serving budget on long prompts, while this costs a few numpy passes per block.
The hash is splitmix64 over fixed integer inputs, so a vector never depends on the process, the platform or
`PYTHONHASHSEED`. Changing anything here that alters a vector must bump `FEATURES_VERSION`: artifacts
record the configuration they were trained with and are refused when it differs.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import scipy.sparse as sp

FEATURES_VERSION = 1

SIGNAL_NAMES: tuple[str, ...] = (
    "log_chars",
    "log_words",
    "turns",
    "has_system",
    "upper_share",
    "digit_share",
    "punct_share",
    "non_ascii_share",
)

Messages = Sequence[Mapping[str, Any]]
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
HashArray = npt.NDArray[np.uint64]

# Maximal runs of two or more word characters: the matches of scikit-learn's `\b\w\w+\b`, without its
# boundary checks (about a quarter less time).
_WORD = re.compile(r"\w\w+")
_ASCII_WORD = re.compile(rb"\w\w+")
_U64 = np.uint64
_MIX_1 = _U64(0xBF58476D1CE4E5B9)
_MIX_2 = _U64(0x94D049BB133111EB)
_PRIME = _U64(0x100000001B3)
_SHIFT_30, _SHIFT_27, _SHIFT_31 = _U64(30), _U64(27), _U64(31)
# Character classes counted for the signals (0: controls, whitespace).
_UPPER, _LOWER, _DIGIT, _PUNCTUATION, _NON_ASCII = range(1, 6)
_CLASSES = _NON_ASCII + 1


@dataclass(frozen=True)
class FeatureConfig:
    """What the extraction produces; recorded in every model card and compared at load."""

    version: int = FEATURES_VERSION
    word_ngrams: tuple[int, int] = (1, 2)
    char_ngrams: tuple[int, int] = (3, 5)
    word_buckets: int = 2**15
    char_buckets: int = 2**16
    # Longer conversations keep their head and tail: it bounds latency and keeps the last request.
    max_chars: int = 16_000
    signals: tuple[str, ...] = SIGNAL_NAMES

    @property
    def n_features(self) -> int:
        return self.word_buckets + self.char_buckets + len(self.signals)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in data.items()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FeatureConfig:
        """Parse a card's `feature_config`; raises KeyError/TypeError/ValueError when malformed."""
        return cls(
            version=int(data["version"]),
            word_ngrams=_pair(data["word_ngrams"]),
            char_ngrams=_pair(data["char_ngrams"]),
            word_buckets=int(data["word_buckets"]),
            char_buckets=int(data["char_buckets"]),
            max_chars=int(data["max_chars"]),
            signals=tuple(str(name) for name in data["signals"]),
        )

    def incompatibility(self) -> str | None:
        """Why this code cannot extract these features, or None when it can."""
        if self.version != FEATURES_VERSION:
            return f"feature version {self.version}, this code extracts version {FEATURES_VERSION}"
        if self.signals != SIGNAL_NAMES:
            return f"signals {list(self.signals)}, this code computes {list(SIGNAL_NAMES)}"
        low_w, high_w = self.word_ngrams
        low_c, high_c = self.char_ngrams
        if not (1 <= low_w <= high_w <= 2):
            return f"word n-grams {self.word_ngrams}, this code supports 1-2"
        if not (1 <= low_c <= high_c <= 8):
            return f"character n-grams {self.char_ngrams}, this code supports 1-8"
        if min(self.word_buckets, self.char_buckets, self.max_chars) < 1:
            return "buckets and max_chars must be positive"
        return None


@dataclass(frozen=True)
class FeatureVector:
    """One conversation's features: sorted unique column indices and their values."""

    indices: IntArray
    values: FloatArray
    n_features: int

    def to_json(self) -> dict[str, Any]:
        """The shape telemetry stores in its `features` field, for training without the text."""
        return {
            "version": FEATURES_VERSION,
            "n_features": self.n_features,
            "indices": self.indices.tolist(),
            "values": self.values.tolist(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FeatureVector:
        indices = np.asarray(data["indices"], dtype=np.int64)
        values = np.asarray(data["values"], dtype=np.float64)
        n_features = int(data["n_features"])
        if int(data["version"]) != FEATURES_VERSION:
            raise ValueError(f"features of version {data['version']}, expected {FEATURES_VERSION}")
        if indices.shape != values.shape or indices.ndim != 1:
            raise ValueError("indices and values must be flat lists of equal length")
        if indices.size and (indices.min() < 0 or indices.max() >= n_features):
            raise ValueError("feature index out of range")
        return cls(indices=indices, values=values, n_features=n_features)


def conversation_text(messages: Messages) -> str:
    """Every message's text, one message per line; text parts of list contents are joined."""
    return "\n".join(_content_text(message.get("content")) for message in messages)


def extract(messages: Messages, config: FeatureConfig) -> FeatureVector:
    """The feature vector of one conversation (OpenAI-style messages)."""
    text = conversation_text(messages)
    if len(text) > config.max_chars:
        half = config.max_chars // 2
        text = text[:half] + "\n" + text[-half:]
    lowered = text.lower()
    columns, values = _hashed_counts(_word_hashes(lowered, config), _char_hashes(lowered, config), config)
    signals = _signals(text, messages)
    signal_idx = np.arange(len(signals), dtype=np.int64) + config.word_buckets + config.char_buckets
    return FeatureVector(
        indices=np.concatenate([columns, signal_idx]),
        values=np.concatenate([values, signals]),
        n_features=config.n_features,
    )


def to_matrix(vectors: Sequence[FeatureVector], n_features: int) -> sp.csr_matrix:
    """Stack vectors into the CSR matrix scikit-learn trains on (training and evaluation only: serving
    never imports scipy)."""
    import scipy.sparse as sp

    indptr = np.zeros(len(vectors) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([vector.indices.size for vector in vectors])
    indices = np.concatenate([vector.indices for vector in vectors]) if vectors else np.zeros(0, np.int64)
    values = np.concatenate([vector.values for vector in vectors]) if vectors else np.zeros(0)
    return sp.csr_matrix((values, indices, indptr), shape=(len(vectors), n_features))


def _pair(value: Any) -> tuple[int, int]:
    low, high = value
    return int(low), int(high)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "\n".join(
            str(part.get("text", "")) for part in content if isinstance(part, Mapping) and "text" in part
        )
    return ""


def _mix(values: HashArray) -> HashArray:
    """splitmix64's finaliser: every input bit affects every output bit."""
    values = (values ^ (values >> _SHIFT_30)) * _MIX_1
    values = (values ^ (values >> _SHIFT_27)) * _MIX_2
    return values ^ (values >> _SHIFT_31)


def _hashed_counts(
    word_hashes: list[HashArray], char_hashes: list[HashArray], config: FeatureConfig
) -> tuple[IntArray, FloatArray]:
    """Both hashed blocks' columns (character columns after the word ones) and their counts, each block
    L2-normalised on its own. One mixing, sort and count over both: on a short prompt numpy's per-call cost,
    not the data, is most of the time."""
    hashes = [*word_hashes, *char_hashes]
    if not hashes:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    mixed = _mix(np.concatenate(hashes))
    n_words = sum(block.size for block in word_hashes)
    _into_buckets(mixed[:n_words], config.word_buckets)
    _into_buckets(mixed[n_words:], config.char_buckets)
    mixed[n_words:] += _U64(config.word_buckets)
    # 32-bit keys (any width short of 2**32 columns) sort in half the time of 64-bit ones.
    keys = np.sort(mixed.astype(np.uint32) if config.word_buckets + config.char_buckets <= 2**32 else mixed)
    # np.unique(return_counts=True) by hand: its generic path costs more than the sort on short prompts.
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    columns = keys[starts].astype(np.int64)
    values = np.diff(np.append(starts, keys.size)).astype(np.float64)
    split = int(np.searchsorted(columns, config.word_buckets))
    for block in (values[:split], values[split:]):  # views: each block normalised in place
        if block.size:
            np.divide(block, math.sqrt(float(block @ block)), out=block)
    return columns, values


def _into_buckets(hashes: HashArray, buckets: int) -> None:
    # A power-of-two bucket count (the default) takes a mask: the same as `%`, several times cheaper.
    if buckets & (buckets - 1) == 0:
        hashes &= _U64(buckets - 1)
    else:
        hashes %= _U64(buckets)


def _word_hashes(lowered: str, config: FeatureConfig) -> list[HashArray]:
    # ASCII text (most prompts) is matched as bytes, where `\w` means the same, so no word is encoded on its
    # own: on a long prompt that and the shorter pattern save about a third of this function's time.
    if lowered.isascii():
        words: list[bytes] = _ASCII_WORD.findall(lowered.encode())
    else:
        words = list(map(str.encode, _WORD.findall(lowered)))
    tokens = np.fromiter(map(zlib.crc32, words), dtype=np.uint64, count=len(words))
    low, high = config.word_ngrams
    hashes = []
    for size in range(low, high + 1):
        if tokens.size < size:
            break
        grams = np.full(tokens.size - size + 1, size, dtype=np.uint64)
        for offset in range(size):
            grams = grams * _PRIME + tokens[offset : tokens.size - size + 1 + offset]
        hashes.append(grams)
    return hashes


def _char_hashes(lowered: str, config: FeatureConfig) -> list[HashArray]:
    padded = " " + " ".join(lowered.split()) + " "
    codes = np.frombuffer(padded.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    low, high = config.char_ngrams
    hashes = []
    # grams[i] holds the polynomial hash of codes[i : i + size]; each size extends the previous one.
    grams = codes.copy()
    for size in range(1, high + 1):
        if size > 1:
            grams = grams[:-1] * _PRIME + codes[size - 1 :]
        if grams.size == 0:
            break
        if size >= low:
            hashes.append(grams ^ _U64(size))
    return hashes


def _signals(text: str, messages: Messages) -> FloatArray:
    # Character classes are counted with a lookup table and one histogram: a Python loop per character costs
    # more than the whole rest of the extraction on a long prompt.
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    counts = np.bincount(_CHAR_CLASS[np.minimum(codes, 128)], minlength=_CLASSES).tolist()
    chars = max(codes.size, 1)
    letters = max(counts[_UPPER] + counts[_LOWER], 1)
    return np.array(
        [
            math.log1p(len(text)) / 10.0,
            math.log1p(len(text.split())) / 8.0,
            min(sum(message.get("role") == "user" for message in messages), 20) / 20.0,
            float(any(message.get("role") in ("system", "developer") for message in messages)),
            counts[_UPPER] / letters,
            counts[_DIGIT] / chars,
            counts[_PUNCTUATION] / chars,
            counts[_NON_ASCII] / chars,
        ],
        dtype=np.float64,
    )


def _char_classes() -> npt.NDArray[np.intp]:
    """The class of each ASCII code, and at index 128 of every code beyond it; other codes (controls,
    whitespace) are class 0."""
    table = np.zeros(129, dtype=np.intp)
    table[ord("A") : ord("Z") + 1] = _UPPER
    table[ord("a") : ord("z") + 1] = _LOWER
    table[ord("0") : ord("9") + 1] = _DIGIT
    for low, high in ("!/", ":@", "[`", "{~"):  # ASCII punctuation: the printable runs between the above
        table[ord(low) : ord(high) + 1] = _PUNCTUATION
    table[128] = _NON_ASCII
    return table


_CHAR_CLASS = _char_classes()

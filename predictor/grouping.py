"""Which labelled rows the predictor may fit on, and how its internal train/test split keeps near-duplicates
on one side. Training only: imports scikit-learn and scipy.

The evaluation part (evaluation/splits.py) comes first: rows of the `heldout` part are never fitted or
calibrated on. A row's part is the one it was labelled with; a row from a file written before rows kept one
takes the part the evaluation gives its id (`predictor.datasets.row_part`: AdvBench, XSTest, MT-bench,
Vicuna and self-instruct ids), and any other row (telemetry, unknown ids) counts as `dev`.

Within the dev part, the split that measures the card's metrics is by group, and near-duplicates share a
group: two rows are linked when the word sets of their requests (a jailbreak's wrapped request, else the
user text; lowercased `\\w+` tokens) have a Jaccard similarity of at least 0.6, or when they share a jailbreak
template (so a request and its wrappings, and all the requests wrapped in one template, stay together).
Groups are the connected components of these links, and scikit-learn's `StratifiedGroupKFold` assigns whole
groups to a side. Rows sharing a template link every request wrapped in it, so with the default datasets the
jailbreaks and the AdvBench requests they wrap form one large group (440 of 1,132 dev rows) that the split
keeps on one side; jailbreak figures then come from the evaluation's held-out part, which is split by
template and request alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.model_selection import StratifiedGroupKFold

from predictor.labels import LabelledRow

NEAR_DUPLICATE_JACCARD = 0.6
WORD_PATTERN = r"(?u)\b\w+\b"


def request_text(row: LabelledRow) -> str:
    """The text near-duplicates are judged on: a jailbreak's request, else the user turns."""
    if row.request is not None:
        return row.request
    return "\n".join(
        str(message.get("content", "")) for message in row.messages or () if message.get("role") == "user"
    )


def near_duplicate_groups(rows: Sequence[LabelledRow]) -> npt.NDArray[np.int64]:
    """A group number per row (the module's rule); rows without text are alone in their group."""
    texts = [request_text(row) for row in rows]
    # binary=True: each row's word set; the empty vocabulary case (no text at all) links nothing.
    vectorizer = CountVectorizer(binary=True, lowercase=True, token_pattern=WORD_PATTERN)
    try:
        words = sp.csr_matrix(vectorizer.fit_transform(texts), dtype=np.float64)
    except ValueError:
        words = sp.csr_matrix((len(rows), 1))
    sizes = np.asarray(words.sum(axis=1)).ravel()
    shared = sp.coo_matrix(words @ words.T)
    union = sizes[shared.row] + sizes[shared.col] - shared.data
    linked = shared.data >= NEAR_DUPLICATE_JACCARD * np.maximum(union, 1)
    links = sp.coo_matrix(
        (np.ones(int(linked.sum())), (shared.row[linked], shared.col[linked])), shape=(len(rows),) * 2
    )
    templates = sorted({row.template for row in rows if row.template is not None})
    if templates:
        column = {name: index for index, name in enumerate(templates)}
        with_template = [i for i, row in enumerate(rows) if row.template is not None]
        one_hot = sp.csr_matrix(
            (
                np.ones(len(with_template)),
                (with_template, [column[str(rows[i].template)] for i in with_template]),
            ),
            shape=(len(rows), len(templates)),
        )
        links = links + one_hot @ one_hot.T
    _, groups = connected_components(sp.csr_matrix(links), directed=False)
    return np.asarray(groups, dtype=np.int64)


def group_split(
    strata: npt.NDArray[np.str_], groups: npt.NDArray[np.int64], test_size: float, seed: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Train and test indices with whole groups on each side, stratified as far as groups allow: of the
    folds of a `StratifiedGroupKFold` with about 1 / test_size folds, the one whose size is nearest
    test_size (a large group can make folds uneven)."""
    folds = max(2, round(1 / test_size))
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    splits = list(splitter.split(np.zeros(strata.size), strata, groups))
    train_idx, test_idx = min(splits, key=lambda pair: abs(pair[1].size / strata.size - test_size))
    return np.asarray(train_idx, dtype=np.int64), np.asarray(test_idx, dtype=np.int64)

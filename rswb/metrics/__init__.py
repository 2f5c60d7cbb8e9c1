"""Evaluation metrics: pure functions over numpy arrays or torch tensors that return flat dicts with stable keys.

* :mod:`rswb.metrics.classification`: ``OA``, ``AA``, ``kappa`` (fractions) and per-class arrays.
* :mod:`rswb.metrics.retrieval`: ``i2t_R@K``, ``t2i_R@K``, ``mR`` (percentages), ``*_medr``, ``*_meanr``
  (1-based), under an explicit tie rule (``expected`` by default, ``optimistic`` / ``pessimistic`` bounds,
  the ``published`` loop, ``clip_benchmark``'s ``torch.topk`` recall).
* :mod:`rswb.metrics.hashing`: ``mAP@K``, ``P@K``, ``P@r{r}``, ``R@r{r}`` (fractions) and the PR curve.
"""

from rswb.metrics.classification import (
    class_labels,
    classification_metrics,
    classification_report,
    confusion_matrix,
    report_from_confusion,
    scores_from_confusion,
)
from rswb.metrics.hashing import binarize, hamming_distance, hash_metrics, pack_codes, pr_curve, unpack_codes
from rswb.metrics.retrieval import (
    DEFAULT_TIES,
    TIE_RULES,
    RankCounts,
    TieCounts,
    metrics_from_counts,
    metrics_from_ranks,
    normalize_caption,
    retrieval_metrics,
    retrieval_metrics_from_embeddings,
    retrieval_rank_counts,
    retrieval_ranks,
    retrieval_ranks_from_embeddings,
)

__all__ = [
    "DEFAULT_TIES",
    "TIE_RULES",
    "RankCounts",
    "TieCounts",
    "binarize",
    "class_labels",
    "classification_metrics",
    "classification_report",
    "confusion_matrix",
    "hamming_distance",
    "hash_metrics",
    "metrics_from_counts",
    "metrics_from_ranks",
    "normalize_caption",
    "pack_codes",
    "pr_curve",
    "report_from_confusion",
    "retrieval_metrics",
    "retrieval_metrics_from_embeddings",
    "retrieval_rank_counts",
    "retrieval_ranks",
    "retrieval_ranks_from_embeddings",
    "scores_from_confusion",
    "unpack_codes",
]

"""Model outputs for people to look at, one module per method: search, attention maps, scene maps, codes.

Training never calls these; notebooks, ``rswb search``, ``rswb report`` and ``rswb eval`` do. Everything here runs a
trained model (in eval mode, restored afterwards) and returns arrays or tensors; :mod:`rswb.viz` draws them.

* :mod:`rswb.infer.retrieval`: :func:`split_embeddings`, :func:`encode_queries`, :func:`search_text`,
  :func:`search_image`, :func:`word_region_maps` (where the model looks), :func:`token_similarity`;
  :func:`encode_run`, :func:`two_way_scores` (seed ensembles, QB-Norm) and :func:`rescored_metrics`.
* :mod:`rswb.infer.hashing`: :func:`load_codes` (the codes of a trained run's query set), :func:`hash_grad_cam`.
* :mod:`rswb.infer.pha`: :func:`load_predictions` (test predictions, confusion, full-scene map),
  :func:`modality_embeddings`, :func:`dictionary_codes`, :func:`pha_attributions`, :func:`pha_scene_maps`.
"""

from rswb.infer.hashing import hash_grad_cam, load_codes
from rswb.infer.pha import (
    dictionary_codes,
    load_predictions,
    modality_embeddings,
    pha_attributions,
    pha_scene_maps,
    pretraining_maps,
)
from rswb.infer.retrieval import (
    SplitEmbeddings,
    TwoWayScores,
    encode_queries,
    encode_run,
    failure_cases,
    rescored_metrics,
    search_image,
    search_text,
    split_embeddings,
    token_similarity,
    two_way_scores,
    word_region_maps,
)

__all__ = [
    "SplitEmbeddings", "TwoWayScores", "dictionary_codes", "encode_queries", "encode_run", "failure_cases",
    "hash_grad_cam", "load_codes", "load_predictions", "modality_embeddings", "pha_attributions", "pha_scene_maps",
    "pretraining_maps", "rescored_metrics", "search_image", "search_text", "split_embeddings", "token_similarity",
    "two_way_scores", "word_region_maps",
]

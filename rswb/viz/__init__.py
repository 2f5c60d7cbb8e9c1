"""Figures and widgets the notebooks use; every plotting function returns its matplotlib Figure."""

from rswb.viz.hashing import (
    gallery_widget,
    hamming_ranking,
    plot_code_embedding,
    plot_hamming_histograms,
    plot_map_vs_bits,
    plot_pr_curves,
    plot_retrieval_gallery,
)
from rswb.viz.pha import (
    dictionary_codes,
    load_predictions,
    modality_embeddings,
    plot_alignment_curves,
    plot_class_maps,
    plot_confusion,
    plot_dictionary_usage,
    plot_modality_embedding,
    plot_scene_overview,
    plot_version_bars,
    plot_version_detail,
    summarize_versions,
    version_picker,
)

__all__ = [
    "dictionary_codes",
    "gallery_widget",
    "hamming_ranking",
    "load_predictions",
    "modality_embeddings",
    "plot_alignment_curves",
    "plot_class_maps",
    "plot_code_embedding",
    "plot_confusion",
    "plot_dictionary_usage",
    "plot_hamming_histograms",
    "plot_map_vs_bits",
    "plot_modality_embedding",
    "plot_pr_curves",
    "plot_retrieval_gallery",
    "plot_scene_overview",
    "plot_version_bars",
    "plot_version_detail",
    "summarize_versions",
    "version_picker",
]

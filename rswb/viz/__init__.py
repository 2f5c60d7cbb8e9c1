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

__all__ = [
    "gallery_widget",
    "hamming_ranking",
    "plot_code_embedding",
    "plot_hamming_histograms",
    "plot_map_vs_bits",
    "plot_pr_curves",
    "plot_retrieval_gallery",
]

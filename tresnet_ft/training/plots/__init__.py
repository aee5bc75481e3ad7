"""Diagnostic figures for a fine-tuning run: curves, confusions, per-class AP, PR, image grids.

Plain matplotlib, no Lightning: every function takes tensors or plain Python data and returns a
:class:`matplotlib.figure.Figure`. Figures are built with the object-oriented API and rendered by
the Agg canvas, never through ``pyplot``, so nothing here changes the global backend, opens a
window, or keeps figures alive in pyplot's registry (a notebook can still display the returned
figure). :func:`save_figure` writes a PNG; :func:`figure_to_array` gives the RGB pixels that
loggers such as Weights & Biases take.

One module per kind of figure: ``curves`` (training curves), ``confusion`` (single-label),
``multilabel`` (per-class AP, precision-recall), ``images`` (image grids, worst predictions) and
``output`` (PNG, pixels). Import from this package; the split is not part of the API.
"""
from .confusion import plot_confusion_matrix, top_confusions
from .curves import is_learning_rate_key, plot_training_curves
from .images import plot_image_grid, plot_worst_predictions
from .multilabel import plot_per_class_ap, plot_precision_recall, precision_recall_points
from .output import figure_to_array, save_figure

__all__ = ["figure_to_array", "is_learning_rate_key", "plot_confusion_matrix", "plot_image_grid",
           "plot_per_class_ap", "plot_precision_recall", "plot_training_curves",
           "plot_worst_predictions", "precision_recall_points", "save_figure", "top_confusions"]

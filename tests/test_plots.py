"""Figures: their content (axes, bar lengths, image data, labels) checked against the inputs."""
from __future__ import annotations

import cv2
import matplotlib.colors
import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, precision_recall_curve

from tresnet_ft.training.plots import (
    figure_to_array,
    plot_confusion_matrix,
    plot_image_grid,
    plot_per_class_ap,
    plot_precision_recall,
    plot_training_curves,
    plot_worst_predictions,
    precision_recall_points,
    save_figure,
    top_confusions,
)

GREEN, RED = matplotlib.colors.to_rgba("tab:green"), matplotlib.colors.to_rgba("tab:red")


def bar_lengths(ax) -> list[float]:
    return [patch.get_width() for patch in ax.patches]


def tick_labels(axis) -> list[str]:
    return [label.get_text() for label in axis.get_ticklabels()]


# -- training curves ----------------------------------------------------------------------------


HISTORY = [
    {"epoch": 0, "step": 10, "train/loss": 2.0, "train/loss_step": 1.9, "val/loss": 1.8,
     "val/top1": 0.4, "lr": 1e-3},
    {"epoch": 1, "step": 20, "train/loss": 1.0, "train/loss_step": 0.9, "val/top1": 0.6,
     "lr": 1e-4},
    {"epoch": 2, "step": 30, "train/loss": 0.5, "val/loss": 0.7, "val/top1": 0.8, "lr": 1e-5},
]


def test_training_curves_group_loss_metrics_and_learning_rate():
    fig = plot_training_curves(HISTORY)
    loss_ax, metric_ax, lr_ax = fig.axes
    assert [ax.get_title() for ax in fig.axes] == ["Loss", "Metrics", "Learning rate"]
    lines = {line.get_label(): line for ax in fig.axes for line in ax.lines}
    assert set(lines) == {"train/loss", "val/loss", "val/top1", "lr"}  # *_step twins skipped
    assert lines["train/loss"].get_xdata().tolist() == [0, 1, 2]
    assert lines["train/loss"].get_ydata().tolist() == [2.0, 1.0, 0.5]
    # val/loss is missing at epoch 1: the line has the two points that exist.
    assert lines["val/loss"].get_xdata().tolist() == [0, 2]
    assert lines["val/loss"].get_ydata().tolist() == [1.8, 0.7]
    assert lines["val/top1"] in metric_ax.lines and lines["lr"] in lr_ax.lines
    assert lr_ax.get_yscale() == "log" and loss_ax.get_xlabel() == "epoch"


def test_training_curves_leave_out_empty_panels_and_fall_back_to_steps():
    # Two validations in one epoch: epochs repeat, so the x axis is the step.
    history = [{"epoch": 0, "step": 5, "val/top1": 0.3}, {"epoch": 0, "step": 10, "val/top1": 0.5}]
    fig = plot_training_curves(history)
    assert [ax.get_title() for ax in fig.axes] == ["Metrics"]
    assert fig.axes[0].get_xlabel() == "step"
    assert fig.axes[0].lines[0].get_xdata().tolist() == [5, 10]


def test_training_curves_cap_the_metrics_panel_and_prefer_validation_metrics():
    history = [{"epoch": 0, "val/a": 1.0, "val/b": 2.0, "other": 3.0}]
    fig = plot_training_curves(history, max_metrics=2)
    assert [line.get_label() for line in fig.axes[0].lines] == ["val/a", "val/b"]


def test_training_curves_reject_an_empty_history_or_one_without_metrics():
    with pytest.raises(ValueError, match="non-empty history"):
        plot_training_curves([])
    with pytest.raises(ValueError, match=r"besides epoch/step, but got keys \['epoch'\]"):
        plot_training_curves([{"epoch": 0}])


# -- confusion matrix ---------------------------------------------------------------------------


def test_small_confusion_matrix_is_drawn_row_normalised_with_class_names():
    confusion = torch.tensor([[8, 2, 0], [1, 3, 0], [0, 0, 0]])
    classes = ["cat", "dog", "bird"]
    fig = plot_confusion_matrix(confusion, classes)
    matrix_ax = fig.axes[0]
    assert len(fig.axes) == 2  # the matrix and its colour bar
    shown = np.asarray(matrix_ax.images[0].get_array())
    expected = np.array([[0.8, 0.2, 0.0], [0.25, 0.75, 0.0], [0.0, 0.0, 0.0]])  # empty row: 0
    np.testing.assert_allclose(shown, expected)
    assert tick_labels(matrix_ax.xaxis) == classes and tick_labels(matrix_ax.yaxis) == classes
    assert "14 images, accuracy 0.786" in matrix_ax.get_title()
    assert "0.75" in [text.get_text() for text in matrix_ax.texts]


def test_large_confusion_matrix_shows_the_top_confusions():
    k = 120
    classes = [f"class_{i}" for i in range(k)]
    confusion = torch.diag(torch.full((k,), 10))
    confusion[3, 7] = 6  # class_3 has 10 + 6 + 4 = 20 images
    confusion[3, 9] = 4
    confusion[50, 2] = 5  # class_50: 15 images
    confusion[100, 101] = 4
    fig = plot_confusion_matrix(confusion, classes, max_classes=30, top_n=3)
    assert len(fig.axes) == 1
    ax = fig.axes[0]
    assert bar_lengths(ax) == [6, 5, 4]
    # Equal counts (3 → 9 and 100 → 101) keep row-major order.
    assert tick_labels(ax.yaxis) == ["class_3 → class_7", "class_50 → class_2", "class_3 → class_9"]
    bar_texts = [text.get_text() for text in ax.texts]
    assert bar_texts == ["6 (30% of true)", "5 (33% of true)", "4 (20% of true)"]
    assert "Top 3 confusions of 120 classes" in ax.get_title()


def test_top_confusions_counts_and_shares():
    confusion = torch.tensor([[5, 3, 2], [0, 4, 0], [1, 0, 0]])
    assert top_confusions(confusion, 10) == [(0, 1, 3, 0.3), (0, 2, 2, 0.2), (2, 0, 1, 1.0)]
    assert top_confusions(torch.eye(3, dtype=torch.long), 5) == []


def test_a_perfect_large_confusion_matrix_says_so():
    fig = plot_confusion_matrix(torch.eye(40, dtype=torch.long), [str(i) for i in range(40)])
    assert [text.get_text() for text in fig.axes[0].texts] == ["no confusions"]


def test_confusion_matrix_rejects_bad_shapes_and_class_lists():
    with pytest.raises(ValueError, match=r"square confusion matrix \[K, K\], but got \[2, 3\]"):
        plot_confusion_matrix(torch.zeros(2, 3), ["a", "b"])
    with pytest.raises(ValueError, match="Expected 2 class names .* but got 3"):
        plot_confusion_matrix(torch.zeros(2, 2), ["a", "b", "c"])


# -- per-class AP and precision-recall ----------------------------------------------------------


def test_per_class_ap_sorted_bars_exclude_classes_without_positives():
    ap = torch.tensor([0.9, float("nan"), 0.3, 0.6, float("nan"), 0.75])
    classes = ["a", "b", "c", "d", "e", "f"]
    fig = plot_per_class_ap(ap, classes)
    (ax,) = fig.axes
    assert bar_lengths(ax) == pytest.approx([0.3, 0.6, 0.75, 0.9])
    assert tick_labels(ax.yaxis) == ["c", "d", "f", "a"]
    assert "mAP 0.638 over 4 classes; 2 without positives excluded" in ax.get_title()
    assert ax.lines[0].get_xdata()[0] == pytest.approx(0.6375)  # the mAP marker


def test_per_class_ap_with_many_classes_shows_the_worst_and_the_best():
    ap = torch.linspace(0.0, 1.0, 101)[torch.randperm(101, generator=torch.Generator().manual_seed(0))]
    classes = [f"tag{i}" for i in range(101)]
    worst_ax, best_ax = plot_per_class_ap(ap, classes, max_classes=10).axes
    expected = ap.sort().values
    assert bar_lengths(worst_ax) == pytest.approx(expected[:5].tolist())
    assert bar_lengths(best_ax) == pytest.approx(expected[-5:].tolist())
    assert tick_labels(worst_ax.yaxis) == [classes[i] for i in ap.argsort()[:5].tolist()]
    assert "worst 5" in worst_ax.get_title() and best_ax.get_title() == "best 5"


def test_per_class_ap_with_no_positive_class_draws_a_message():
    fig = plot_per_class_ap(torch.full((3,), float("nan")), ["a", "b", "c"])
    assert "3 without positives" in fig.axes[0].get_title()
    assert fig.axes[0].texts[0].get_text() == "no class has a positive"


def test_precision_recall_points_match_scikit_learn_with_ties():
    generator = torch.Generator().manual_seed(1)
    targets = (torch.rand(200, generator=generator) < 0.3).int()
    scores = torch.round((0.4 * targets + 0.6 * torch.rand(200, generator=generator)) * 20) / 20
    precision, recall = precision_recall_points(scores, targets)
    sk_precision, sk_recall, _ = precision_recall_curve(targets.numpy(), scores.numpy())
    # scikit-learn lists thresholds ascending and appends the (precision 1, recall 0) end point.
    np.testing.assert_allclose(precision, sk_precision[:-1][::-1])
    np.testing.assert_allclose(recall, sk_recall[:-1][::-1])
    assert recall[-1] == 1.0 and len(recall) == len(scores.unique())


def test_precision_recall_plot_has_micro_average_and_the_most_frequent_classes():
    generator = torch.Generator().manual_seed(2)
    frequency = torch.tensor([0.5, 0.1, 0.4, 0.0, 0.3])  # class "d" has no positives
    targets = (torch.rand(300, 5, generator=generator) < frequency).int()
    scores = 0.5 * targets + 0.5 * torch.rand(300, 5, generator=generator)
    classes = ["a", "b", "c", "d", "e"]
    (ax,) = plot_precision_recall(scores, targets, classes, max_curves=3).axes
    labels = [line.get_label() for line in ax.lines]
    assert len(ax.lines) == 4  # micro-average + 3 classes
    micro_ap = average_precision_score(targets.flatten().numpy(), scores.flatten().numpy())
    assert labels[0] == f"micro-average (AP {micro_ap:.3f})"
    assert [label.split(" ")[0] for label in labels[1:]] == ["a", "c", "e"]  # most positives
    ap_a = average_precision_score(targets[:, 0].numpy(), scores[:, 0].numpy())
    assert f"(AP {ap_a:.3f}, {int(targets[:, 0].sum())} pos.)" in labels[1]
    micro = ax.lines[0]
    precision, recall = precision_recall_points(scores.flatten(), targets.flatten())
    np.testing.assert_allclose(micro.get_xdata(), recall)
    np.testing.assert_allclose(micro.get_ydata(), precision)


def test_precision_recall_downsamples_very_long_curves():
    scores = torch.rand(5000, 2, generator=torch.Generator().manual_seed(3))
    targets = (scores > 0.5).int()
    (ax,) = plot_precision_recall(scores, targets, ["x", "y"]).axes
    assert all(len(line.get_xdata()) <= 2000 for line in ax.lines)
    assert ax.lines[0].get_xdata()[-1] == 1.0


def test_precision_recall_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"but got \[4, 2\] and \[4, 3\]"):
        plot_precision_recall(torch.rand(4, 2), torch.zeros(4, 3), ["a", "b"])


# -- worst predictions --------------------------------------------------------------------------


def test_worst_predictions_grid_shows_each_image_with_a_coloured_caption():
    images = torch.randint(0, 256, (5, 3, 12, 10), dtype=torch.uint8)
    fig = plot_worst_predictions(images, ["cat", "dog", "cat", "bird", "cat"],
                                 ["dog", "dog", "bird", "bird", "dog"],
                                 [0.91, 0.55, 0.6, 0.7, 0.8], ncols=3)
    assert len(fig.axes) == 6  # 2 rows of 3; the last one empty
    with_images = [ax for ax in fig.axes if ax.images]
    assert len(with_images) == 5
    for ax, image in zip(with_images, images):
        np.testing.assert_array_equal(ax.images[0].get_array(), image.permute(1, 2, 0).numpy())
    titles = [ax.title for ax in with_images]
    assert titles[0].get_text() == "cat / dog (0.91)"
    assert [matplotlib.colors.to_rgba(t.get_color()) for t in titles] == [RED, GREEN, RED, GREEN, RED]


def test_worst_predictions_accepts_float_images_and_explicit_correct_flags():
    images = torch.tensor([0.0, 0.5, 1.0, 2.0]).reshape(1, 1, 2, 2).expand(2, 3, 2, 2)
    fig = plot_worst_predictions(images, ["a, b", "c"], ["b, a", "c"], [0.8, 0.9],
                                 correct=[True, False])
    pixels = fig.axes[0].images[0].get_array()
    assert pixels.dtype == np.uint8 and pixels[..., 0].tolist() == [[0, 128], [255, 255]]
    colours = [matplotlib.colors.to_rgba(ax.title.get_color()) for ax in fig.axes]
    assert colours == [GREEN, RED]


def test_worst_predictions_rejects_mismatched_captions():
    with pytest.raises(ValueError, match="Expected 2 captions for 2 images"):
        plot_worst_predictions(torch.zeros(2, 3, 4, 4), ["a"], ["a", "b"], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"\[M, 3, H, W\], but got \[2, 4, 4\]"):
        plot_worst_predictions(torch.zeros(2, 4, 4), ["a", "b"], ["a", "b"], [0.1, 0.2])


# -- output -------------------------------------------------------------------------------------


def test_save_figure_writes_a_readable_png_the_size_of_the_rendered_figure(tmp_path):
    fig = plot_training_curves(HISTORY)
    path = save_figure(fig, tmp_path / "nested" / "curves.png", dpi=50)
    image = cv2.imread(str(path))
    assert path.stat().st_size > 0 and image is not None
    assert image.shape == figure_to_array(fig, dpi=50).shape
    assert image.std() > 0  # not a blank canvas
    with pytest.raises(ValueError, match="ending in .png"):
        save_figure(fig, tmp_path / "curves.jpg")


# -- image grid ---------------------------------------------------------------------------------


def test_image_grid_shows_each_image_with_its_caption_and_a_title():
    images = torch.randint(0, 256, (3, 3, 6, 8), dtype=torch.uint8)
    fig = plot_image_grid(images, ["circle", "square", "a very long caption " * 3], ncols=2,
                          title="A training batch")
    assert len(fig.axes) == 4 and fig.get_suptitle() == "A training batch"
    with_images = [ax for ax in fig.axes if ax.images]
    assert len(with_images) == 3
    for ax, image in zip(with_images, images):
        np.testing.assert_array_equal(ax.images[0].get_array(), image.permute(1, 2, 0).numpy())
    assert [ax.get_title() for ax in with_images][:2] == ["circle", "square"]
    assert "\n" in with_images[2].get_title()  # long captions are wrapped


def test_image_grid_without_captions_and_with_float_images():
    images = torch.full((2, 3, 4, 4), 0.5)
    fig = plot_image_grid(images)
    assert [ax.get_title() for ax in fig.axes] == ["", ""] and fig.get_suptitle() == ""
    assert fig.axes[0].images[0].get_array().dtype == np.uint8
    assert int(fig.axes[0].images[0].get_array()[0, 0, 0]) == 128


def test_image_grid_rejects_bad_inputs():
    with pytest.raises(ValueError, match="Expected 2 captions for 2 images, but got 1"):
        plot_image_grid(torch.zeros(2, 3, 4, 4), ["a"])
    with pytest.raises(ValueError, match="empty batch"):
        plot_image_grid(torch.zeros(0, 3, 4, 4))
    with pytest.raises(ValueError, match="ncols"):
        plot_image_grid(torch.zeros(1, 3, 4, 4), ncols=0)


def pixel_at(fig, ax, x: float, y: float) -> tuple[int, int, int]:
    """The rendered colour at data point (x, y) of ``ax``."""
    pixels = figure_to_array(fig)  # draws the figure, so the transforms below are final
    column, row = ax.transData.transform((x, y))
    return tuple(int(v) for v in pixels[pixels.shape[0] - int(round(row)), int(round(column))])


def test_training_curves_draw_step_lines_and_the_monitored_metric_on_a_second_axis():
    history = [{"epoch": 0, "step": 4, "train/loss": 1.5, "train/loss_epoch": 1.5, "val/loss": 1.2,
                "val/top1": 0.5, "val/top5": 0.9, "train/lr": 0.1}]  # one epoch: one point each
    steps = [{"step": s, "train/loss_step": 2.0 - 0.1 * s} for s in range(4)]
    steps += [{"step": s, "lr-SGD/pg1": 0.1 / (s + 1), "lr-SGD/pg2": 0.1 / (s + 1), "lr-SGD/pg3": 0.01}
              for s in range(4)]
    fig = plot_training_curves(history, steps=steps, monitor="val/top1")
    loss_ax, metric_ax, lr_ax, twin = fig.axes
    assert [ax.get_title() for ax in fig.axes] == ["Loss and val/top1", "Metrics", "Learning rate", ""]
    lines = {line.get_label(): line for ax in fig.axes for line in ax.lines}
    assert set(lines) == {"train/loss_step", "train/loss", "val/loss", "val/top1", "val/top5",
                          "lr-SGD/pg1 (+1 identical)", "lr-SGD/pg3"}  # no train/lr, no *_epoch twin
    assert lines["train/loss_step"].get_xdata().tolist() == [0, 1, 2, 3]
    assert lines["train/loss_step"].get_ydata().tolist() == pytest.approx([2.0, 1.9, 1.8, 1.7])
    assert lines["train/loss"].get_color() == lines["train/loss_step"].get_color()
    assert lines["lr-SGD/pg1 (+1 identical)"].get_ydata().tolist() == pytest.approx([0.1, 0.05, 0.1 / 3, 0.025])
    assert lr_ax.get_yscale() == "log" and loss_ax.get_xlabel() == "step"
    # The monitored metric: on the second axis, named in the loss panel's legend, and its single
    # point is drawn as a marker that shows in the picture.
    monitor = lines["val/top1"]
    assert monitor in twin.lines and twin.get_ylabel() == "val/top1"
    assert [t.get_text() for t in loss_ax.get_legend().get_texts()] == [
        "train/loss_step", "train/loss", "val/loss", "val/top1"]
    assert monitor.get_xdata().tolist() == [4] and monitor.get_marker() == "s"
    green = matplotlib.colors.to_rgb("tab:green")
    assert pixel_at(fig, twin, 4, 0.5) == tuple(round(255 * c) for c in green)
    assert lines["val/top5"] in metric_ax.lines


def test_training_curves_mark_a_lone_step_value_and_keep_epoch_values_without_steps():
    fig = plot_training_curves([{"epoch": 0, "step": 1, "train/loss": 1.0, "lr": 0.1}],
                               steps=[{"step": 0, "train/loss_step": 1.2}])
    lines = {line.get_label(): line for ax in fig.axes for line in ax.lines}
    assert lines["train/loss_step"].get_marker() == "o"  # one point: a line alone would not show
    assert lines["lr"].get_xdata().tolist() == [1] and lines["lr"].get_marker() == "o"

"""Which columns of a Hugging Face dataset hold the image and the labels, read from its features.

* **Image:** the one column whose feature is ``Image`` (or raw ``binary`` bytes, or the Image
  feature's ``{bytes, path}`` struct in a file written without features); several need ``image_column``.
* **Labels:** ``label_column``, else the one ``ClassLabel`` or ``List(ClassLabel)`` column (one
  named ``label``/``labels`` wins among several), else a column named ``label``, ``labels``,
  ``tags``, ``class`` or ``category``. Its feature decides the task:

  ============================== ============ =========================================
  feature                        task         classes
  ============================== ============ =========================================
  ``ClassLabel``                 single-label its names, in label order
  ``List(ClassLabel)``           multi-label  its names, in label order
  ``Value("string")``            single-label the training values, sorted
  ``List(Value("string"))``      multi-label  the training values, sorted
  ``Value("int*")``              single-label the training values, by value ("0", "1", ...)
  ============================== ============ =========================================

  Sorting is the CSV source's (:func:`tresnet_ft.data.tabular.class_order`): names that are all
  whole numbers go by value.

Label columns are read from the Arrow table alone: no image is touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .base import Task
from .splits import describe_names
from .tabular import class_order
from ..errors import InvalidValueError

LabelKind = Literal["class_label", "class_label_list", "string", "string_list", "integer"]
LABEL_NAMES = ("label", "labels", "tags", "class", "category")
_TASKS: dict[str, Task] = {"class_label": "single_label", "string": "single_label", "integer": "single_label",
                           "class_label_list": "multi_label", "string_list": "multi_label"}


@dataclass(frozen=True)
class Columns:
    """The image and label columns of a dataset and how to read the labels."""

    image: str
    label: str
    kind: LabelKind
    names: tuple[str, ...] | None  # ClassLabel names, when the feature has them

    @property
    def task(self) -> Task:
        return _TASKS[self.kind]


def detect_columns(features: Any, source: str, image_column: str | None = None,
                   label_column: str | None = None) -> Columns:
    """The columns to train on, from ``features`` (a ``datasets.Features``); see the module docstring.

    Raises:
        InvalidValueError: a named column does not exist or holds no image/label, or no column (or
            several) fits; the message lists the columns and their features.
    """
    image = _image_column(features, source, image_column)
    label = _label_column(features, source, image, label_column)
    kind = _label_kind(features[label])
    if kind is None:
        raise InvalidValueError(f"Expected label column {label!r} of {source} to hold class labels, strings, "
                                f"lists of them or integers, but it holds {_describe(features[label])}. Fix: name "
                                f"another with label_column; the columns are {_listing(features)}.")
    names = _class_names(features[label], kind)
    return Columns(image, label, kind, names)


def _image_column(features: Any, source: str, named: str | None) -> str:
    if named is not None:
        _check_exists(features, named, "image_column", source)
        if not _is_image(features[named]):
            raise InvalidValueError(f"Expected image_column {named!r} of {source} to hold images (an Image feature "
                                    f"or bytes), but it holds {_describe(features[named])}. The columns are "
                                    f"{_listing(features)}.")
        return named
    found = [name for name, feature in features.items() if _is_image(feature)]
    if len(found) != 1:
        what = "no Image column" if not found else f"several: {found}"
        raise InvalidValueError(f"Expected one Image column in {source}, but found {what}. Fix: name it with "
                                "dataset_options {\"image_column\": NAME}; the columns are " + _listing(features) + ".")
    return found[0]


def _label_column(features: Any, source: str, image: str, named: str | None) -> str:
    if named is not None:
        _check_exists(features, named, "label_column", source)
        return named
    others = [name for name in features if name != image]
    class_labels = [name for name in others if _label_kind(features[name]) in ("class_label", "class_label_list")]
    preferred = [name for name in class_labels if name in ("label", "labels")]
    if len(class_labels) == 1 or len(preferred) == 1:
        return (preferred or class_labels)[0]
    by_name = [name for name in others if name in LABEL_NAMES and _label_kind(features[name]) is not None]
    if not class_labels and by_name:
        return by_name[0]
    what = f"several: {class_labels}" if class_labels else "none"
    raise InvalidValueError(
        f"Expected one label column in {source} (a ClassLabel feature, or one named {list(LABEL_NAMES)}), but found "
        f"{what}. Fix: name it with dataset_options {{\"label_column\": NAME}}; the columns are {_listing(features)}.")


def _check_exists(features: Any, name: str, option: str, source: str) -> None:
    if name not in features:
        raise InvalidValueError(f"Expected {option} {name!r} to be a column of {source}, but it has "
                                f"{_listing(features)}. Fix: pass one of those names.")


def _is_image(feature: Any) -> bool:
    import datasets

    def is_bytes(value: Any) -> bool:
        return isinstance(value, datasets.Value) and value.dtype in ("binary", "large_binary")

    # The Image feature; raw bytes; or its {bytes, path} storage in a file written without features.
    return isinstance(feature, datasets.Image) or is_bytes(feature) or (
        isinstance(feature, dict) and is_bytes(feature.get("bytes")))


def _inner(feature: Any) -> Any | None:
    """The element feature of a list feature (``List``, ``LargeList``), else None."""
    import datasets

    return feature.feature if isinstance(feature, (datasets.List, datasets.LargeList)) else None


def _label_kind(feature: Any) -> LabelKind | None:
    import datasets

    inner = _inner(feature)
    if isinstance(feature, datasets.ClassLabel):
        return "class_label"
    if isinstance(inner, datasets.ClassLabel):
        return "class_label_list"
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        return "string"
    if isinstance(inner, datasets.Value) and inner.dtype in ("string", "large_string"):
        return "string_list"
    if isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint")):
        return "integer"
    return None


def _class_names(feature: Any, kind: LabelKind) -> tuple[str, ...] | None:
    if kind == "class_label":
        return tuple(feature.names)
    if kind == "class_label_list":
        return tuple(_inner(feature).names)
    return None


def _describe(feature: Any) -> str:
    """A feature in a few words: ``Image``, ``ClassLabel``, ``Value(string)``, ``List(ClassLabel)``."""
    import datasets

    inner = _inner(feature)
    if inner is not None:
        return f"{type(feature).__name__}({_describe(inner)})"
    if isinstance(feature, datasets.Value):
        return f"Value({feature.dtype})"
    return type(feature).__name__


def _listing(features: Any) -> str:
    return ", ".join(f"{name} ({_describe(feature)})" for name, feature in features.items())


# -- reading the labels ------------------------------------------------------------------------

def read_labels(table: Any, columns: Columns) -> list[Any] | np.ndarray:
    """The label of every row of ``table`` (a ``pyarrow.Table``): ``int64 [N]`` for class labels,
    else a list of ints/strings, or of lists of them, one per row (None for an empty cell)."""
    column = table.column(columns.label)
    if columns.kind == "class_label":
        values = column.to_numpy(zero_copy_only=False)
        return np.where(np.isnan(values), -1, values).astype(np.int64) if values.dtype.kind == "f" else \
            values.astype(np.int64)
    return column.to_pylist()


def classes_from(columns: Columns, train_labels: list[Any] | np.ndarray, source: str) -> list[str]:
    """Class names: the ClassLabel's, else the training labels' (sorted, as the CSV source sorts)."""
    if columns.names is not None:
        classes = list(columns.names)
    else:
        classes = class_order({str(tag) for tag in _tags(train_labels, columns)})
    if not classes:
        raise InvalidValueError(f"Expected labels in the training split of {source}, but column "
                                f"{columns.label!r} has none.")
    if columns.task == "single_label" and len(classes) < 2:
        raise InvalidValueError(f"Expected at least 2 classes in column {columns.label!r} of {source} for "
                                f"single-label training, but found {classes}. Fix: name another label_column.")
    return classes


def targets_from(labels: list[Any] | np.ndarray, columns: Columns, classes: list[str], where: str) -> np.ndarray:
    """``int64 [N]`` class indices (single-label) or ``float32 [N, K]`` multi-hot (multi-label).

    Raises:
        InvalidValueError: an unlabelled row (a missing value or ClassLabel -1) in single-label
            data, or a label that is not one of ``classes``; ``where`` names the split.
    """
    if columns.kind == "class_label":
        indices = np.asarray(labels, dtype=np.int64)
        _check_range(indices, len(classes), columns, where)
        return indices
    index = {name: k for k, name in enumerate(classes)}
    if columns.task == "single_label":
        unknown = sorted({str(tag) for tag in labels if tag is not None and str(tag) not in index})
        _check_known(unknown, columns, where)
        if any(tag is None for tag in labels):
            raise _unlabelled(columns, where)
        return np.array([index[str(tag)] for tag in labels], dtype=np.int64)
    targets = np.zeros((len(labels), len(classes)), dtype=np.float32)
    for row, tags in enumerate(labels):
        present = [tag for tag in (tags or []) if tag is not None]
        if columns.kind == "class_label_list":  # indices into the ClassLabel's names
            _check_range(np.asarray(present, dtype=np.int64), len(classes), columns, where)
            targets[row, present] = 1.0
            continue
        _check_known(sorted({str(tag) for tag in present} - set(index)), columns, where)
        targets[row, [index[str(tag)] for tag in present]] = 1.0
    return targets


def _tags(labels: list[Any] | np.ndarray, columns: Columns) -> set[Any]:
    if columns.task == "single_label":
        return {tag for tag in labels if tag is not None}
    return {tag for tags in labels for tag in (tags or []) if tag is not None}


def _check_range(indices: np.ndarray, count: int, columns: Columns, where: str) -> None:
    if indices.size and indices.min() < 0:
        raise _unlabelled(columns, where)
    if indices.size and indices.max() >= count:
        raise InvalidValueError(f"Expected class indices in [0, {count}) in column {columns.label!r} of {where}, "
                                f"but got {int(indices.max())}.")


def _unlabelled(columns: Columns, where: str) -> InvalidValueError:
    return InvalidValueError(f"Expected every row of {where} to have a label in column {columns.label!r}, but some "
                             "have none (a missing value or -1, as in test splits published without labels). "
                             "Fix: train and validate on labelled splits (dataset_options val_split), or remove "
                             "those rows.")


def _check_known(unknown: list[str], columns: Columns, where: str) -> None:
    if unknown:
        raise InvalidValueError(f"Labels {describe_names(unknown)} in column {columns.label!r} of {where} appear in "
                                "no training row: a model cannot learn them. Fix: add training rows with them or "
                                "remove them.")

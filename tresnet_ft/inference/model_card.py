"""The ``README.md`` model card of a folder in timm's hub layout (``inference/hub_export.py``).

YAML front matter as the Hugging Face hub reads it (``library_name: timm``, tags, pipeline), then:
what the model is, how to load it with timm and with tresnet-ft, how images must be prepared,
what the thresholds mean (multi-label), the classes, the training settings, the validation
metrics and the run's plots.
"""
from __future__ import annotations

from typing import Any, Optional

from ..classifier.checkpoint import ClassifierInfo
from .run_record import RunRecord

MAX_LISTED_CLASSES = 100
PLACEHOLDER_REPO = "ORG/NAME"
PAPERS = {"tresnet": "TResNet: High Performance GPU-Dedicated Architecture (arXiv:2003.13630)",
          "ml_decoder": "ML-Decoder: Scalable and Versatile Classification Head (arXiv:2111.12933)",
          "asl": "Asymmetric Loss For Multi-Label Classification (arXiv:2009.14119)"}


def model_card(info: ClassifierInfo, record: RunRecord, pretrained_cfg: dict[str, Any],
               plots: list[str], repo_id: Optional[str] = None) -> str:
    """The card's Markdown text. ``plots``: paths of the PNGs inside the folder (``plots/curves.png``)."""
    repo = repo_id or PLACEHOLDER_REPO
    sections = [_front_matter(info), _summary(info, record, repo_id), _usage(info, repo),
                _preprocessing(info, pretrained_cfg), _thresholds(info), _classes(info),
                _training(record), _metrics(record), _plots(plots), _references(info, record)]
    return "\n".join(section for section in sections if section)


def _front_matter(info: ClassifierInfo) -> str:
    tags = ["image-classification", "timm", "tresnet-ft", "tresnet", info.task.replace("_", "-")]
    if info.head == "ml_decoder":
        tags.append("ml-decoder")
    lines = ["---", "library_name: timm", "pipeline_tag: image-classification", "tags:"]
    lines += [f"- {tag}" for tag in tags]
    return "\n".join(lines + ["---", ""])


def _summary(info: ClassifierInfo, record: RunRecord, repo_id: Optional[str]) -> str:
    what = "a multi-label tagger" if info.task == "multi_label" else "a single-label classifier"
    start = record.model.get("pretrained")
    start_text = f", fine-tuned from `{start}`" if start else ""
    dataset = record.data.get("dataset")
    data_text = f" on the `{dataset}` data" if dataset else ""
    name = repo_id.split("/")[-1] if repo_id else f"{info.arch} fine-tuned with tresnet-ft"
    return (f"# {name}\n\n{info.arch} ({_head_name(info)} head), {what} for {info.num_classes} "
            f"{'tags' if info.task == 'multi_label' else 'classes'} at {info.image_size} px{start_text}{data_text}, "
            "trained with tresnet-ft (PyTorch Lightning).\n\nFiles: `config.json` and "
            "`model.safetensors` in timm's layout; `tresnet_ft.json` with the task, the classes, the "
            "preprocessing and the tuned thresholds (timm ignores it).\n")


def _head_name(info: ClassifierInfo) -> str:
    return "ML-Decoder" if info.head == "ml_decoder" else "linear"


def _usage(info: ClassifierInfo, repo: str) -> str:
    ours = (f"## How to use\n\nWith tresnet-ft installed:\n\n```python\nfrom tresnet_ft import "
            f"load_classifier\n\nclassifier = load_classifier(\"hf-hub:{repo}\")  # or a local folder\n"
            "model, info = classifier.model, classifier.info  # info: classes, task, preprocessing, thresholds\n"
            f"```\n\n```bash\ntresnet-ft predict hf-hub:{repo} photos/ -o predictions.csv\n```\n")
    if info.head == "ml_decoder":
        return ours + ("\nWith timm alone: **not possible**. timm's TResNet has no ML-Decoder head, so "
                       f"`timm.create_model(\"hf-hub:{repo}\")` stops at the `head` entry of `model_args` "
                       "instead of building a model without it. The backbone weights (`body.*`) are timm's "
                       "and load into `timm.create_model(\"" + info.arch + "\", num_classes=0)` with "
                       "`strict=False`.\n")
    sigmoid = "sigmoid" if info.task == "multi_label" else "softmax"
    return ours + (f"\nWith timm:\n\n```python\nimport timm, torch\nfrom PIL import Image\n\nmodel = timm.create_model("
                   f"\"hf-hub:{repo}\", pretrained=True).eval()\nconfig = timm.data.resolve_model_data_config(model)\n"
                   "transform = timm.data.create_transform(**config)\nwith torch.no_grad():\n    logits = model("
                   f"transform(Image.open(\"photo.jpg\").convert(\"RGB\")).unsqueeze(0))\nscores = logits.{sigmoid}"
                   f"({'' if sigmoid == 'sigmoid' else '-1'})\nlabels = model.pretrained_cfg[\"label_names\"]\n```\n")


def _preprocessing(info: ClassifierInfo, cfg: dict[str, Any]) -> str:
    p = info.preprocessing
    if p.eval_crop == "squish":
        ours = f"resize the whole image to {p.image_size}x{p.image_size} (no crop, the aspect ratio is not kept)"
    else:
        ours = (f"resize the short side to {p.resize_side} px, then crop the centre {p.image_size}x{p.image_size} "
                f"(crop fraction {p.eval_crop_fraction:g})")
    return (f"## Preprocessing\n\nRGB scaled to [0, 1], mean {list(p.mean)}, std {list(p.std)}; {ours}. "
            f"`config.json` says the same in timm's terms (`crop_mode: {cfg['crop_mode']}`, `crop_pct: "
            f"{cfg['crop_pct']:g}`, `input_size: {cfg['input_size']}`), so timm's eval transform makes images of "
            "the same geometry. The resampling differs slightly: tresnet-ft resizes with OpenCV (area averaging "
            "when shrinking, bilinear when enlarging), timm with PIL bilinear. The logits of the two loaders are "
            "equal (within 1e-4) on the same input tensor; on the same photo they differ by that resampling "
            "only.\n")


def _thresholds(info: ClassifierInfo) -> str:
    if info.task != "multi_label":
        return ""
    text = ("## Decision thresholds\n\nA tag is predicted when its sigmoid score is above its threshold. ")
    if info.thresholds is None:
        return text + "No thresholds were tuned: tresnet-ft uses 0.5 for every tag.\n"
    per_class = [float(v) for v in info.decision_thresholds().tolist()]
    rows = "\n".join(f"| {name} | {value:.4f} |" for name, value in
                     list(zip(info.classes, per_class))[:MAX_LISTED_CLASSES])
    more = (f"\n\n({info.num_classes - MAX_LISTED_CLASSES} more in `tresnet_ft.json`.)"
            if info.num_classes > MAX_LISTED_CLASSES else "")
    f1 = info.thresholds
    return (text + "Each tag's threshold was tuned on the validation set to maximise that tag's F1 (macro F1 "
            f"{f1.get('f1_before', 0):.3f} at 0.5, {f1.get('f1_global', 0):.3f} at one threshold "
            f"{f1.get('global_threshold', 0.5):.3f} for all, {f1.get('f1_after', 0):.3f} per tag; measured on the "
            "images they were tuned on, so optimistic). `tresnet-ft predict` and `load_classifier(...).info."
            "decision_thresholds()` apply them; with timm, compare `logits.sigmoid()` with the values below "
            "(also in `tresnet_ft.json`, `classifier.thresholds.per_class`).\n\n| tag | threshold |\n|---|---|\n"
            + rows + more + "\n")


def _classes(info: ClassifierInfo) -> str:
    shown = ", ".join(f"`{name}`" for name in info.classes[:MAX_LISTED_CLASSES])
    more = f" and {info.num_classes - MAX_LISTED_CLASSES} more" if info.num_classes > MAX_LISTED_CLASSES else ""
    return f"## {'Tags' if info.task == 'multi_label' else 'Classes'} (output order)\n\n{shown}{more}\n"


def _table(values: dict[str, Any]) -> str:
    return "| setting | value |\n|---|---|\n" + "\n".join(f"| {k} | `{v}` |" for k, v in values.items())


def _training(record: RunRecord) -> str:
    if not (record.model or record.data or record.trainer):
        return "## Training\n\nThe checkpoint did not record its training settings.\n"
    parts = ["## Training\n"]
    if record.run_name:
        parts.append(f"Run `{record.run_name}`, checkpoint of epoch {record.epoch}. The data folder is not recorded.\n")
    for title, values in (("Model and optimisation", record.model), ("Data", record.data),
                          ("Trainer", record.trainer)):
        if values:
            parts.append(f"### {title}\n\n{_table(values)}\n")
    return "\n".join(parts)


def _metrics(record: RunRecord) -> str:
    if not record.metrics:
        return ""
    rows = "\n".join(f"| {name} | {value:.4f} |" for name, value in sorted(record.metrics.items()))
    return f"## Validation metrics\n\nAt the checkpoint's epoch ({record.epoch}).\n\n| metric | value |\n|---|---|\n{rows}\n"


def _plots(plots: list[str]) -> str:
    if not plots:
        return ""
    return "## Plots\n\n" + "\n".join(f"![{path.rsplit('/', 1)[-1][:-4]}]({path})" for path in plots) + "\n"


def _references(info: ClassifierInfo, record: RunRecord) -> str:
    papers = [PAPERS["tresnet"]] + ([PAPERS["ml_decoder"]] if info.head == "ml_decoder" else [])
    papers += [PAPERS["asl"]] if str(record.model.get("loss", "")).startswith("asl") else []
    return "## References\n\n" + "\n".join(f"- {paper}" for paper in papers) + "\n"

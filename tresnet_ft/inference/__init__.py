"""The parts :mod:`tresnet_ft.predict` and :mod:`tresnet_ft.export` are built from.

Plain PyTorch, NumPy and OpenCV; nothing here imports Lightning.

* ``loading.py``: a checkpoint → the fused, eval-only model plus its :class:`ClassifierInfo`;
* ``inputs.py``: files, folders and CSV/JSONL tables → the list of image paths to predict;
* ``stream.py``: paths → a DataLoader of preprocessed batches, in path order, bad files flagged;
* ``rows.py``: logits → prediction rows, and the CSV/JSONL writers that stream them to disk;
* ``exportable.py``: the module that gets exported (optionally behind a ``uint8`` input stage);
* ``sidecar.py``: the JSON next to an exported model that makes it usable without this package.
* ``hub_export.py``, ``model_card.py``, ``run_record.py``, ``hub_push.py``: a checkpoint as a folder in
  timm's Hugging Face hub layout, its model card, what its run recorded, and the upload.
* ``packages.py``: importing a package one path needs (``onnx``), or one line naming its ``pip install``.
"""

"""tresnet-ft: fine-tune pretrained TResNet image classifiers."""
__version__ = "0.1.0"

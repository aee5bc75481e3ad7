"""Classification losses (plain PyTorch): functions, ``nn.Module`` forms, and the registry the
training module builds its loss from."""
from .functional import (asymmetric_loss, asymmetric_loss_single_label, binary_cross_entropy, cross_entropy,
                         soft_target_cross_entropy)
from .modules import (AsymmetricLoss, AsymmetricLossSingleLabel, BinaryCrossEntropy, LabelSmoothingCrossEntropy,
                      SoftTargetCrossEntropy)
from .registry import LOSSES, create_loss, resolve_loss

__all__ = ["AsymmetricLoss", "AsymmetricLossSingleLabel", "BinaryCrossEntropy", "LOSSES", "LabelSmoothingCrossEntropy",
           "SoftTargetCrossEntropy", "asymmetric_loss", "asymmetric_loss_single_label", "binary_cross_entropy",
           "create_loss", "cross_entropy", "resolve_loss", "soft_target_cross_entropy"]

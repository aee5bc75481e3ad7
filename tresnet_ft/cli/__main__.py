"""``python -m tresnet_ft.cli ...`` is ``tresnet-ft ...`` (torchrun and SLURM launch it this way)."""
import sys

from .command import main

sys.exit(main())

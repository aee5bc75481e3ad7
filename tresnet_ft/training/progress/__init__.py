"""What a fit shows while it runs and when it ends.

- :class:`ThroughputProgressBar`: Lightning's rich bar with the training loss and images per
  second, narrow enough for an 80-column terminal. When stdout is not a terminal (a cluster log,
  ``| tee``, ``nohup``) a live bar would print nothing until the end, so it writes plain lines
  instead: one every ``log_every_n_steps`` batches and one per epoch.
- :class:`FitReport`: one summary line at the end of every fit (best metric, its epoch, the best
  checkpoint, the time taken) and, after Ctrl-C, the command that resumes the run.

One module per part: ``bar`` (the live bar), ``throughput`` (the images-per-second meter),
``plain`` (the lines that replace the bar in logs), ``report`` (the end-of-fit summary and the
resume hint), ``checkpoints`` (which checkpoints the fit kept) and ``formatting``. Import from this
package; the split is not part of the API.
"""
from .bar import COMPACT_THEME, ThroughputProgressBar
from .checkpoints import best_checkpoint_callback, last_checkpoint, saved_epoch
from .formatting import format_duration, format_rate
from .plain import PlainProgress
from .report import FitReport, fit_summary, resume_command, resume_hint
from .throughput import ThroughputMeter, count_images

__all__ = ["COMPACT_THEME", "FitReport", "PlainProgress", "ThroughputMeter", "ThroughputProgressBar",
           "best_checkpoint_callback", "count_images", "fit_summary", "format_duration", "format_rate",
           "last_checkpoint", "resume_command", "resume_hint", "saved_epoch"]

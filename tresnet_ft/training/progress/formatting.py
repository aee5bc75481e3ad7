"""How rates and durations read in the bar, the plain lines and the end-of-fit summary."""
from __future__ import annotations

from datetime import timedelta


def format_rate(rate: float) -> str:
    """Images per second as shown: whole numbers from 10 on, two decimals below."""
    return f"{rate:.0f}" if rate >= 10 else f"{rate:.2f}"


def format_duration(seconds: float) -> str:
    """``H:MM:SS``, whole seconds."""
    return str(timedelta(seconds=int(seconds)))

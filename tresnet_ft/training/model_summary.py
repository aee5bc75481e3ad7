"""The model summary a fit prints before training, without Lightning's empty FLOPs column."""
from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import RichModelSummary
from lightning.pytorch.utilities.model_summary import get_formatted_model_size, get_human_readable_count

SHOWN_COLUMNS = ("Name", "Type", "Params", "Mode")


class CompactModelSummary(RichModelSummary):
    """Lightning's rich model summary with the columns that carry information.

    Lightning counts FLOPs only when the module defines an ``example_input_array``; otherwise its
    summary prints a column of zeros and "Total FLOPs: 0", which reads as a broken model. This one
    shows name, type, parameters and mode, then one line of totals.
    """

    @staticmethod
    def summarize(summary_data: list[tuple[str, list[str]]], total_parameters: int, trainable_parameters: int,
                  model_size: float, total_training_modes: dict[str, int], total_flops: int,
                  **summarize_kwargs: Any) -> None:
        from rich import get_console
        from rich.table import Table

        columns = {name: values for name, values in summary_data}
        shown = [name for name in SHOWN_COLUMNS if name in columns]
        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        table.add_column(" ", style="dim")
        for name in shown:
            table.add_column(name, justify="right" if name == "Params" else "left")
        for row in zip(summary_data[0][1], *(columns[name] for name in shown)):
            table.add_row(*row)
        console = get_console()
        console.print(table)
        frozen = total_parameters - trainable_parameters
        console.print(f"[bold]Params[/]: {get_human_readable_count(int(total_parameters)).strip()} "
                      f"({get_human_readable_count(int(frozen)).strip()} frozen), "
                      f"{get_formatted_model_size(model_size)} MB")

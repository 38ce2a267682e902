"""The margin schedule the trainer applies to a loss's ``margin`` before every step: WeSpeaker's exponential margin
increase (H. Wang et al., "WeSpeaker", ICASSP 2023)."""

from __future__ import annotations

from dataclasses import dataclass

# Fraction of the margin still missing at the start of the ramp (WeSpeaker's final_val = 1e-3).
RAMP_FLOOR = 1e-3


def margin_at(epoch: float, final: float, start: float, end: float) -> float:
    """Margin at progress ``epoch`` (completed epochs, fractional): 0 up to ``start``, ``final`` from ``end``,
    between ``final * (1 - 1e-3 ** p) / (1 - 1e-3)``, p = (epoch - start) / (end - start); start == end == 0: always
    ``final``."""
    if start < 0 or end < start:
        raise ValueError(f"margin schedule needs 0 <= margin_rampup_start <= margin_rampup_end, got start {start}, "
                         f"end {end} (0/0 disables the schedule)")
    if start == 0 and end == 0:
        return final
    if epoch >= end:
        return final
    if epoch <= start:
        return 0.0
    progress = (epoch - start) / (end - start)
    return final * (1.0 - RAMP_FLOOR**progress) / (1.0 - RAMP_FLOOR)


@dataclass(frozen=True)
class MarginSchedule:
    """--margin ramped from 0 at the start of epoch --margin_rampup_start to its value at the start of epoch
    --margin_rampup_end. Epochs count from 1, as WeSpeaker's increase_start_epoch and fix_start_epoch do: the ramp
    runs from ``start - 1`` to ``end - 1`` completed epochs (``margin_at``)."""

    final: float
    start: float
    end: float

    def __post_init__(self) -> None:
        margin_at(0.0, self.final, self.start, self.end)  # ValueError for a start after the end

    @property
    def enabled(self) -> bool:
        return self.start > 0 or self.end > 0

    def at(self, progress: float) -> float:
        """The margin after ``progress`` epochs of training (1.5: halfway through the second epoch)."""
        if not self.enabled:
            return self.final
        return margin_at(progress, self.final, max(self.start - 1, 0.0), max(self.end - 1, 0.0))

"""What a run leaves behind: losses, learning rates, validation curve, final test metrics."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class History:
    steps: list[int] = dataclasses.field(default_factory=list)
    loss: list[float] = dataclasses.field(default_factory=list)
    lr: list[float] = dataclasses.field(default_factory=list)
    eval_steps: list[int] = dataclasses.field(default_factory=list)
    val_miou: list[float] = dataclasses.field(default_factory=list)
    test: dict = dataclasses.field(default_factory=dict)      # final SegMetrics.as_dict()
    train_seconds: float = 0.0
    cached: bool = False                                        # loaded from a run cache

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        return cls(**d)

    @property
    def test_miou(self) -> float:
        return self.test.get("miou", float("nan"))

    def plot(self, title: str | None = None):
        """Loss (smoothed) and validation mIoU against the step.  Returns the figure."""
        from .plots import plot_history

        return plot_history(self, title)

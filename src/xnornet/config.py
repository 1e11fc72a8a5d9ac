"""Model configuration: torch-free, so the CLI, export and the engine can use it without torch."""
from __future__ import annotations

from dataclasses import asdict, dataclass

MODEL_KINDS = ("fp32", "xnor", "bireal")
ALIASES = {"baseline": "fp32"}


@dataclass(frozen=True)
class TrunkConfig:
    kind: str = "bireal"
    widths: tuple[int, ...] = (64, 128, 256)
    depths: tuple[int, ...] = (3, 3, 3)
    num_classes: int = 10
    # False: binary activations with real-valued weights in the binary convs, stage 1 of two-stage
    # training (docs/training.md); such a model cannot be exported. Only for xnor and bireal.
    binary_weights: bool = True

    def __post_init__(self):
        kind = ALIASES.get(self.kind, self.kind)
        if kind not in MODEL_KINDS:
            raise ValueError(f"unknown model {self.kind!r}; choose one of "
                             f"{sorted(MODEL_KINDS + tuple(ALIASES))}")
        if len(self.widths) != len(self.depths) or min(self.depths) < 1 or min(self.widths) < 1:
            raise ValueError(f"widths {self.widths} and depths {self.depths} must pair up, "
                             "all >= 1")
        if kind == "fp32" and not self.binary_weights:
            raise ValueError("fp32 has no binary weights to make real-valued")
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))

    def to_dict(self) -> dict:
        """JSON-ready (lists, not tuples), so it compares equal to what a checkpoint stores."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

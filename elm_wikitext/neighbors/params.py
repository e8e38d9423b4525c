"""What the neighbours stage reads, and nothing else (the pipeline fills it from --column and --neighbors)."""

from dataclasses import dataclass


@dataclass(frozen=True)
class NeighborParams:
    column: str  # the embedding column searched; its neighbours go in the two columns named after it
    k: int  # neighbours per row; 0: none, and the column's old neighbour columns go

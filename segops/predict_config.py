"""The `predict` section of `params.yaml`: how a trained model scores images. Outside the
config hash (`segops.config.config_hash`): it says how a model is used, not what it is."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class PredictConfig(BaseModel):
    """Scoring images with a trained model (`segops predict`, the served model, the score flow,
    evaluation)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: int = Field(8, ge=1, description="images (or sliding windows) per forward pass")
    threads: Literal["auto"] | Annotated[int, Field(ge=1)] = Field(
        "auto", description="torch CPU threads where a model is loaded to score (as train.threads)"
    )
    max_tile: int = Field(
        1024,
        ge=0,
        description="largest side of a tile at native resolution: an image that fits is "
        "predicted whole; 0: tiles of the model's input size (the protocol before issue 17)",
    )
    overlap: float = Field(0.5, ge=0.0, lt=1.0, description="tiles' overlap, share of a side")
    onnx: bool = Field(
        True,
        description="the retrain flow exports each registered model to ONNX after the gate "
        "(parity checked, ~3 s on a tiny run); false: skipped and tagged so, "
        "`segops export` makes one when needed",
    )


TILE_ALIGN = 32  # tiles' sides and offsets: a multiple of every model's total stride


def tiling_rule(max_tile: int, input_size: int | None, overlap: float) -> str:
    """How an image predicted at native resolution is cut into tiles, in words (recorded with
    the evaluation protocol and in the model's contract)."""
    if max_tile == 0:
        return f"windows of the input size ({input_size} px) overlapping by {overlap}"
    return (
        f"the whole image when each side, padded to a multiple of {TILE_ALIGN} px, is at most "
        f"{max_tile} px; else tiles of up to {max_tile} px overlapping by {overlap}"
    )

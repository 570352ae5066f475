"""The ``registry.card:`` part of medops.yaml: what people say about a model in its model card.

    registry:
      card:
        description: Pneumonia on paediatric chest X-rays (PneumoniaMNIST)
        intended_use: Second reader for triage research; not for diagnosis
        out_of_scope: [adults, lateral views]
        limitations: [one hospital's images, 28 px]
        authors: [Radiology AI group]
        references: [https://medmnist.com]

Everything measured (data, metrics, gate, preprocessing, weights) is written into the card by
the register step; these fields hold what only people know. They live under ``registry`` and
not ``model`` on purpose: the ``model`` section is part of the training checkpoint's key, and
rewording the intended use must not retrain anything.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ModelCardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str | None = None
    intended_use: str | None = None
    out_of_scope: list[str] = Field(default_factory=list)
    limitations: list[str] = Field(default_factory=list)
    authors: list[str] = Field(default_factory=list)
    references: list[str] = Field(default_factory=list)

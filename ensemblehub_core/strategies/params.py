"""The parameter models every strategy shares: `StrategyParams`, the base of each strategy's ``Params``, and
`SelectParams`, its optional selection step (run by `strategies.select`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["DEFAULT_SELECT_TEMPLATE", "SelectParams", "StrategyParams"]

DEFAULT_SELECT_TEMPLATE = (
    "Here is a problem:\n\n{question}\n\nCan you solve this problem correctly? Answer with Yes or No only."
)


class SelectParams(BaseModel):
    """The optional selection step of any strategy.

    Attributes:
        method: ``judgment``: each member says whether it can solve the problem.
        keep: How many members go on to the strategy.
        template: The question put to each member, with ``{question}``.
    """

    model_config = ConfigDict(extra="forbid")
    method: Literal["judgment"] = "judgment"
    keep: int = Field(default=1, ge=1)
    template: str = DEFAULT_SELECT_TEMPLATE


class StrategyParams(BaseModel):
    """Base of every strategy's parameters: unknown keys are an error.

    Attributes:
        select: Optional model selection before the strategy runs (see `strategies.select`).
    """

    model_config = ConfigDict(extra="forbid")
    select: SelectParams | None = None

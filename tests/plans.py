"""Ray Data's logical plan of a built dataset, for tests that check which stages a job has
(internal to Ray Data: `_logical_plan`)."""

from __future__ import annotations

from typing import Any


def logical_operators(dataset: Any) -> list[Any]:
    """Every logical operator of `dataset`'s plan, from its last back to its reads."""
    operators, pending = [], [dataset._logical_plan.dag]
    while pending:
        operator = pending.pop()
        operators.append(operator)
        pending.extend(operator.input_dependencies)
    return operators

"""Provisional copy of the contract's `GenerationSettings` (issue 10); main's version replaces it.

One frozen object from the command line down to the loop; constructing it validates it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from .draft_len import MAX_DRAFT
from .errors import SpecdecError
from .sampling import SamplingParams


@dataclass(frozen=True)
class GenerationSettings:
    max_tokens: int = 256
    draft: Union[int, str] = "auto"
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: tuple[str, ...] = ()
    max_context: Optional[int] = None
    battery: Optional[bool] = None

    def __post_init__(self):
        if self.max_tokens < 1:
            raise SpecdecError(f"--max-tokens must be >= 1, not {self.max_tokens}")
        if self.draft != "auto" and not (isinstance(self.draft, int) and 0 <= self.draft <= MAX_DRAFT):
            raise SpecdecError(f"draft tokens must be 0-{MAX_DRAFT}, 'auto' or 'off', not {self.draft!r}")
        if self.max_context is not None and self.max_context < 1:
            raise SpecdecError(f"--max-context must be >= 1, not {self.max_context}")

"""What the engine thread tells an HTTP handler: one typed event per choice update.

The engine thread puts these on `RequestHandle.queue`; `streaming.py` reads them. A streamed
request gets `DeltaEvent`s then one `DoneEvent` per choice; a whole (non-streamed) one gets
only the `DoneEvent`s. An `ErrorEvent` ends the request: its other choices are aborted.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Iterator, Literal

from autoglm_jax.engine.outputs import RequestOutput, StreamDelta
from autoglm_jax.serve.protocol import APIError


class _TupleView:
    """Events read as `(kind, index, ...)` too: that was their shape before they were typed,
    and code that drains a handle's queue by hand (tests, scripts) still indexes them so."""

    kind: ClassVar[str]
    # The events below compare by identity (eq=False): their payloads are large and mutable.

    def _as_tuple(self) -> tuple[Any, ...]:
        return (self.kind, *(getattr(self, f.name) for f in dataclasses.fields(self)))

    def __getitem__(self, i: int) -> Any:
        return self._as_tuple()[i]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._as_tuple())

    def __len__(self) -> int:
        return len(self._as_tuple())


@dataclasses.dataclass(frozen=True, eq=False)
class DeltaEvent(_TupleView):
    """New text and tokens of choice `index` (streamed requests only)."""

    kind: ClassVar[Literal["delta"]] = "delta"
    index: int
    delta: StreamDelta


@dataclasses.dataclass(frozen=True, eq=False)
class DoneEvent(_TupleView):
    """Choice `index` finished: its last delta (what a stream sends last) and its full output
    (what a whole response is built from; it carries the finish reason and token counts)."""

    kind: ClassVar[Literal["done"]] = "done"
    index: int
    delta: StreamDelta
    output: RequestOutput


@dataclasses.dataclass(frozen=True, eq=False)
class ErrorEvent(_TupleView):
    """The request failed; `index` is the choice that failed, None for the whole request."""

    kind: ClassVar[Literal["error"]] = "error"
    index: int | None
    error: APIError


EngineEvent = DeltaEvent | DoneEvent | ErrorEvent

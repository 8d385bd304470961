# The optional C extension (reconciler/_netfast.c); each function's Python twin is named there.
from collections.abc import Callable, Collection, Sequence
from typing import Any

def scan(
    items: list[Any],
    start: int,
    seen4: dict[str, int] | None,
    seen6: dict[str, int] | None,
    comments: bool,
    slow: Callable[[int, Any], object],
    /,
) -> None: ...
def sort(members: Collection[str], /) -> list[str] | None: ...
def encode(
    members: list[str],
    v6: bool,
    head: bytes,
    cidr_hdr: bytes,
    lineno_hdr: bytes,
    extra: bytes,
    /,
) -> bytes | None: ...
def format4(
    chunk: bytes | memoryview, size: int, addr_off: int, cidr_off: int, /
) -> list[str] | None: ...
def runs(text: str, minimum: int, /) -> list[tuple[int, int, int, list[str]]] | None: ...
def ops(
    op_type: type[Any], verb: str, members: list[str], extra: dict[str, Any], /
) -> list[Any]: ...
def dicts(ops: Sequence[Any], /) -> list[dict[str, Any]] | None: ...
def members(ops: Sequence[Any], width: int, /) -> list[str] | None: ...
def same4(
    chunks: list[bytes], size: int, addr_off: int, cidr_off: int, members: Collection[str], /
) -> bool | None: ...

# The compiled DataRow decoder (router/backend/_rowdecode.c); router/backend/pgrows.py says
# what it does.
from typing import Any

def configure(
    kinds: dict[Any, int], ext_type: type, decimal: type,
    value_errors: tuple[type[BaseException], ...], bounds: tuple[int, int, int, int], /,
) -> None: ...
def decode_rows(
    buf: bytearray | bytes, pos: int, decoders: tuple[Any, ...], rows: list[Any], /,
) -> int | tuple[int, int, Exception]: ...

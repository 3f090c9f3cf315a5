from array import array
from collections.abc import Sequence

def encode_kv_batch(
    sequence: int,
    pairs: Sequence[tuple[bytes, bytes | None]],
    key_size_bytes_max: int,
    value_size_bytes_max: int,
    /,
) -> bytes | None: ...
def memtable_set_many(
    entries: dict[bytes, bytes | None],
    new_keys: list[bytes],
    pairs: Sequence[tuple[bytes, bytes | None]],
    overhead: int,
    size: int,
    tombstones: int,
    /,
) -> tuple[int, int] | None: ...
def bloom_build_words(
    word_hashes: array[int], bit_hashes: array[int], word_count: int, /
) -> bytes | None: ...
def encode_data_block(
    keys: list[bytes], values: list[bytes | None], payload_bytes_max: int, /
) -> bytes | None: ...

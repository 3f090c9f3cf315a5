"""The optional C loops of the storage hot path (`_speedups.c`), or None for each.

Built at install time when a C compiler is there (`hatch_build.py`); without one, or with
`MINIKV_PURE_PYTHON=1` in the environment (an A/B of the two, a suspected C bug), the Python
twins run: `KvBatch.encode_pairs`, `Memtable.set_many`, `bloom.build_words` and
`sstable_format.encode_data_block` define what each loop means, and the tests check that both
give the same results.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Callable, Sequence
from typing import Final

EncodeKvBatch = Callable[[int, Sequence[tuple[bytes, bytes | None]], int, int], bytes | None]
MemtableSetMany = Callable[
    [dict[bytes, bytes | None], list[bytes], Sequence[tuple[bytes, bytes | None]], int, int, int],
    tuple[int, int] | None,
]

# Quoted: `array` is not subscriptable at run time, and these aliases are evaluated.
BloomBuildWords = Callable[["array[int]", "array[int]", int], bytes | None]
EncodeDataBlock = Callable[[list[bytes], list[bytes | None], int], bytes | None]

encode_kv_batch: EncodeKvBatch | None = None
memtable_set_many: MemtableSetMany | None = None
bloom_build_words: BloomBuildWords | None = None
encode_data_block: EncodeDataBlock | None = None

if os.environ.get("MINIKV_PURE_PYTHON", "") in ("", "0"):
    try:
        from minikv_core.storage import _speedups
    except ImportError:
        pass
    else:
        encode_kv_batch = _speedups.encode_kv_batch
        memtable_set_many = _speedups.memtable_set_many
        bloom_build_words = _speedups.bloom_build_words
        encode_data_block = _speedups.encode_data_block

IMPLEMENTATION: Final = "c" if encode_kv_batch is not None else "python"
"""Which loops run: benchmarks print it, so that their numbers are compared like for like."""

"""Remembering what scrubbing and checking computed for a text, within a memory budget.

Reports repeat most of their strings (the same certificate chain for
thousands of endpoints), so each set of addresses carries two memos: one for
the scrubber's results and one for the texts the checker found clean. This
module holds the bounded memo only; it decides nothing about addresses.
"""

from __future__ import annotations

from typing import Any


class _Memo:
    """Results of a pure function of a text, emptied whenever it holds too much.

    Reports repeat most of their strings (keys, failure strings, above all the
    peer certificate chain, the same for thousands of endpoints), so scrubbing
    and checking remember their results per :class:`_Targets`. Only texts up to
    :data:`MEMO_TEXT` characters are kept, and at most :data:`MEMO_BUDGET`
    characters of keys and results in all (plus a small charge per entry).
    """

    def __init__(self) -> None:
        self._results: dict[tuple[str, int], Any] = {}
        self._size = 0

    def get(self, key: tuple[str, int]) -> Any:
        return self._results.get(key)

    def put(self, key: tuple[str, int], result: Any) -> None:
        size = len(key[0]) + (len(result) if isinstance(result, str) else 0) + 64
        if len(key[0]) > MEMO_TEXT:
            return
        if self._size + size > MEMO_BUDGET:
            self._results.clear()
            self._size = 0
        self._results[key] = result
        self._size += size


#: Texts longer than this are never memoised (pages, large payloads).
MEMO_TEXT = 64 << 10
#: Characters (keys and results) one memo holds before it is emptied.
MEMO_BUDGET = 4 << 20

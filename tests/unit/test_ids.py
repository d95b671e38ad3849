"""The one bound on ids every service applies."""

from __future__ import annotations

from driftloop_core.ids import MAX_ID_BYTES, oversized


def test_ids_are_measured_in_utf8_bytes() -> None:
    assert MAX_ID_BYTES == 256
    assert oversized("c" * 256) is None
    assert oversized("c" * 257) == 257
    # 64 four-byte characters fit exactly; one more does not.
    assert oversized("\U0001f600" * 64) is None
    assert oversized("\U0001f600" * 65) == 260
    # 100 two-byte characters: short in characters, long in bytes.
    assert oversized("é" * 100, limit=150) == 200
    # A lone surrogate, which JSON can carry, is measured, not an error.
    assert oversized("\ud800" * 90) == 270

"""Sizes padded to a bucket, so that inputs of nearby sizes share one compiled program."""


def bucket(n: int, smallest: int) -> int:
    """The smallest power of two >= ``n`` and >= ``smallest``: inputs padded to it share
    one compiled program over a range of sizes."""
    return max(smallest, 1 << (int(n) - 1).bit_length())

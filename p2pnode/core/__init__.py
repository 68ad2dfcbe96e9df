"""Pure cores of dcn: records, membership, wire codec, broadcast queue, limits.

Nothing here does I/O, reads a clock, sleeps or imports trio: time (``now``) and randomness (``rng``) are passed
in by the shells in ``p2pnode.net``, which keeps every rule here testable with plain synchronous tests.
"""

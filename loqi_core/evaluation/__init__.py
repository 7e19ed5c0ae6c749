"""The evaluation engine: degrade → encode → search → recall@N (``engine``), the on-disk cache it reads and
writes, nearest-neighbour search, the result type reports read, and descriptor/pair outputs."""

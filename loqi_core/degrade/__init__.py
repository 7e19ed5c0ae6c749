"""Degradations: the base classes (``base``), sampled specs' draws (``sampled``), the spec grammar that parses
``res360p+qp40`` or ``jpeg[5:50]`` into them (``grammar``), and the ``loqi degrade`` engine (``engine``)."""

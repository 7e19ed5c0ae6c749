"""Whole experiments: ``runner`` (teacher, student and baseline rows of one ``loqi run``/``sweep``/``eval``) and
``reproduce`` (the paper's published tables, planned and run)."""

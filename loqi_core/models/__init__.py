"""A VPR model: composition of a method's encoder and aggregator (``model``), its preprocessing, pretrained
weights, checkpoints, and layers several methods share."""

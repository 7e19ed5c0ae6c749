"""What datasets are made of and where they come from: image and dataset types (``sets``), decoding
(``images``), folder readers (``folders``), the built-in ``folder`` dataset and dataset-name resolution."""

"""One module per command group; each exports ``COMMANDS`` and imports torch only inside its commands."""

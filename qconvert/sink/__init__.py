"""Writers of output formats."""

"""Sessions: lifecycle and ownership."""

"""rswb."""

"""The training-set export: the labelled conversations in each toolkit's format."""

"""Publishing: the output directory, its manifest, the card, the validation gates, the Hub."""

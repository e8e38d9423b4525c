"""Neighbours stage: each row's nearest other rows of its split, per embedding column."""

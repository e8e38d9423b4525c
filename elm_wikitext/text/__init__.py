"""The text stage: WikiText's lines (source), paragraphs (paragraphs, detokenize), the split."""

"""The training side: embedding new text as the dataset was embedded, consistency, fast loading."""

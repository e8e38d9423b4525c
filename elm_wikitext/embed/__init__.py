"""The embed stage: the model's tokens, its forward pass and pooling (encode), the resumable chunks that the pipeline's processes share."""

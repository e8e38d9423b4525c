"""The device the vectors are computed on, and the dtypes a build may ask for: shared by the embed
stage, the reference check and the training-side Embedder."""

import torch

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def pick_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")

"""The pretrain stage: tokenizers and the multimodal masked model, on the test space alone."""

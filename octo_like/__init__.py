"""octo_like: generalist robot policies in JAX/Flax."""

import os

# TensorFlow only feeds data here. Before any module imports it: keep its C++ start-up chatter off
# stderr (so a CLI's error stays one line), and leave oneDNN's reordered float math off so that
# the pipeline's augmentations give the same bits on every machine.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

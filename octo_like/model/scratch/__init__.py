"""The from-scratch family (Octo / OTTER style): observation tokenizers (image stems, goal images,
proprio, CLIP patches selected by the instruction), the block-wise masked transformer with readout
tokens, and PolicyNetwork, which joins them to the shared action heads."""

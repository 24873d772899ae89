"""The VLM-initialized family (OpenVLA / pi0 style): PaliGemma (SigLIP + Gemma) as the backbone,
the action tokenizers (uniform bins, FAST), the pi0-style flow-matching action expert, and the
action kinds behind one declared interface (actions.VLAActions) that VLANetwork runs."""

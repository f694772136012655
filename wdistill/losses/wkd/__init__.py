"""WKD (Lv, Yang, Li, NeurIPS 2024): WKD-L on logits, WKD-F on features, the CKA category cost,
the cosine weight decay and the official per-pair settings."""

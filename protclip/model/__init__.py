"""ProtCLIP model: towers (ESM-2, BERT), attention backends, heads and the four objectives."""

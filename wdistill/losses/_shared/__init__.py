"""Parts shared by several loss terms: layer pairing, connector heads, memory banks, and the
torch.distributed helpers they (and the engine) use."""

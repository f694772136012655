"""WCoRD (Chen et al., CVPR 2021): the global dual-form term with its critic and memory buffer,
and the local primal-form OT inside the batch."""

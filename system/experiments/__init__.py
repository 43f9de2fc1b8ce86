"""What a study varies: search spaces for Ray Tune and the ablation's arms, variants and statistics."""

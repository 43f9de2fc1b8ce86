"""Submitting to a Ray cluster: the job plan (id, config hash, runtime env, what is uploaded) and the job client."""

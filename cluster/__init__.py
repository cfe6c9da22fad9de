"""Corpus building with Ray and job submission to SLURM and Ray clusters."""

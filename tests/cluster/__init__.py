"""Tests of the cluster package (the readers for now), one module per room."""

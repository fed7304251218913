"""Delivery artefacts (chart, install manifest, Argo CD, Dockerfile): tests without a cluster."""

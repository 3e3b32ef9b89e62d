"""Prefect pipelines for daskgmm: nightly model upkeep and anomaly scoring of configured jobs."""

"""The DisaggregatedModel API (disagg.dev/v1alpha1): pydantic models that generate the CRD."""

"""Hand-written FHIR R4 patient charts for tests (see lupus.py)."""

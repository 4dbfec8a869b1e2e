"""Energy meters (plugins), readings and the carbon model."""

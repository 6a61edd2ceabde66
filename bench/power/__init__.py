"""Power and energy: sampling meters during a measurement, integrating energy per inference."""

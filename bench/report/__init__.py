"""Reports built from stored runs."""

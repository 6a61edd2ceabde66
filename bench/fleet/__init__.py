"""Fleet knowledge: what each device really is, and whether it is alive."""

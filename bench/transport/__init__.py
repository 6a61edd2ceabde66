"""Transports: SSH with a persistent remote agent, serial ports."""

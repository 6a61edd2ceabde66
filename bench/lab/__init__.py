"""The virtual lab: gateways as network namespaces running a real sshd (see virtual.py)."""

"""The fleet: where desktops run, watching the hosts, and moving desktops between them.

It acts on desktops, so it lives with them and calls down into `hypervisors` (hosts,
pools, the pure balancer, the driver); nothing in `hypervisors` calls back up.
"""

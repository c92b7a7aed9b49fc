"""Writes about hosts, storage pools and disks.

Driver and qemu-img calls happen outside database transactions: the row is committed
first, the slow I/O runs, then the result is committed (a libvirt call can take seconds
and must never hold a lock on the rows other workers need).
"""

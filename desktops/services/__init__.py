"""Every write to a desktop, as typed functions, one concern per module.

Pattern: a user-facing service (`lifecycle.desktop_start`) checks permissions and state,
moves the desktop to a busy status with one conditional update
(`transitions.desktop_transition`), and schedules a Celery task after commit. The task
calls the matching engine service (`lifecycle.desktop_boot`), which does the
libvirt/qemu-img I/O outside any transaction and records the outcome with another
transition. Failures always end in FAILED with the reason a person can read.
"""

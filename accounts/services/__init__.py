"""Writes to people and courses, as typed functions, one concern per module.

`enrolment` (a course's code per role, to join or sign up with) and `passwords` (resets
and changes). What the directory writes (the link at login, the group sync) lives in
`accounts.ldap`.
"""

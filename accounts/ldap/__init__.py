"""The school's LDAP directories: configuration, login, the group sync and its checks.

The only package that imports `ldap` and django-auth-ldap. One module per concern:
`config` (the settings as one value), `client` (connections and reads), `backend` (login),
`people` and `sync` (the directory's writes to people, courses and memberships), `report`
(what a sync did) and `checks` (system checks). It uses `accounts.models`, never
`accounts.services`.
"""
